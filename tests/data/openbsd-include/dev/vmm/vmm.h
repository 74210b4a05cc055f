/* Stand-in for <dev/vmm/vmm.h> (rev 1.11): names used by hv_openbsd.c only. */
#ifndef SHIM_DEV_VMM_VMM_H
#define SHIM_DEV_VMM_VMM_H
#include <stddef.h>
#include <sys/ioctl.h>
#include <machine/vmmvar.h>

#define VMM_MAX_MEM_RANGES	16
#define VMM_MAX_NAME_LEN	64
#define VMM_MAX_VCPUS		512

struct vm_mem_range {
	paddr_t vmr_gpa;
	vaddr_t vmr_va;
	size_t vmr_size;
	int vmr_type;
};
#define VM_MEM_RAM		0

struct vm_create_params {
	size_t vcp_nmemranges;
	size_t vcp_ncpus;
	struct vm_mem_range vcp_memranges[VMM_MAX_MEM_RANGES];
	char vcp_name[VMM_MAX_NAME_LEN];
	int vcp_sev;
	int vcp_seves;
	uint32_t vcp_id;
	uint32_t vcp_poscbit;
	uint32_t vcp_asid[VMM_MAX_VCPUS];
};

struct vm_terminate_params {
	uint32_t vtp_vm_id;
};

struct vm_resetcpu_params {
	uint32_t vrp_vm_id;
	uint32_t vrp_vcpu_id;
	struct vcpu_reg_state vrp_init_state;
};

struct vm_run_params {
	uint32_t vrp_vm_id;
	uint32_t vrp_vcpu_id;
	struct vcpu_inject_event vrp_inject;
	uint8_t vrp_intr_pending;
	struct vm_exit *vrp_exit;
	uint16_t vrp_exit_reason;
	uint8_t vrp_irqready;
};

#define VMM_IOC_CREATE		_IOWR('V', 1, struct vm_create_params)
#define VMM_IOC_RUN		_IOWR('V', 2, struct vm_run_params)
#define VMM_IOC_TERM		_IOW('V', 4, struct vm_terminate_params)
#define VMM_IOC_RESETCPU	_IOW('V', 5, struct vm_resetcpu_params)
#endif
