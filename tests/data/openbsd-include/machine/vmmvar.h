/* Stand-in for <machine/vmmvar.h> (amd64, rev 1.117): names used by hv_openbsd.c only. */
#ifndef SHIM_MACHINE_VMMVAR_H
#define SHIM_MACHINE_VMMVAR_H
#include <stdint.h>

typedef unsigned long vaddr_t;
typedef unsigned long paddr_t;

#define VMX_EXIT_HLT		12
#define VMX_EXIT_IO		30
#define SVM_VMEXIT_HLT		0x78
#define SVM_VMEXIT_IOIO		0x7B
#define VM_EXIT_TERMINATED	0xFFFE
#define VM_EXIT_NONE		0xFFFF

enum { VEI_DIR_OUT, VEI_DIR_IN };

struct vm_exit_inout {
	uint8_t vei_size, vei_dir, vei_rep, vei_string, vei_encoding;
	uint16_t vei_port;
	uint32_t vei_data;
	uint8_t vei_insn_len;
};

struct vm_exit_eptviolation {
	uint8_t vee_fault_type, vee_insn_info, vee_insn_len, vee_insn_bytes[15];
};

struct vcpu_inject_event {
	uint8_t vie_vector;
	uint32_t vie_errorcode;
	uint8_t vie_type;
};
#define VCPU_INJECT_NONE	0

struct vcpu_segment_info {
	uint16_t vsi_sel;
	uint32_t vsi_limit;
	uint32_t vsi_ar;
	uint64_t vsi_base;
};

#define VCPU_REGS_RIP		16
#define VCPU_REGS_RFLAGS	17
#define VCPU_REGS_NGPRS		18
#define VCPU_REGS_CR0		0
#define VCPU_REGS_NCRS		10
#define VCPU_REGS_ES		0
#define VCPU_REGS_CS		1
#define VCPU_REGS_SS		2
#define VCPU_REGS_DS		3
#define VCPU_REGS_FS		4
#define VCPU_REGS_GS		5
#define VCPU_REGS_LDTR		6
#define VCPU_REGS_TR		7
#define VCPU_REGS_NSREGS	8
#define VCPU_REGS_NMSRS		7
#define VCPU_REGS_NDRS		6

struct vcpu_reg_state {
	uint64_t vrs_gprs[VCPU_REGS_NGPRS];
	uint64_t vrs_crs[VCPU_REGS_NCRS];
	uint64_t vrs_msrs[VCPU_REGS_NMSRS];
	uint64_t vrs_drs[VCPU_REGS_NDRS];
	struct vcpu_segment_info vrs_sregs[VCPU_REGS_NSREGS];
	struct vcpu_segment_info vrs_gdtr;
	struct vcpu_segment_info vrs_idtr;
};

struct vm_exit {
	union {
		struct vm_exit_inout vei;
		struct vm_exit_eptviolation vee;
	};
	struct vcpu_reg_state vrs;
	int cpl;
};
#endif
