/*
 * The OpenBSD vmm(4) backend of slat-workload, built in the OpenBSD guest by
 * its own cc with -DSLAT_OPENBSD (main.c, hv_openbsd.c, l2_x86.c).
 *
 * Written against the ioctl structures of openbsd/src sys/dev/vmm/vmm.h
 * rev 1.11 (2025-07-15) and sys/arch/amd64/include/vmmvar.h rev 1.117
 * (2025-09-17):
 *
 *   VMM_IOC_CREATE   struct vm_create_params: vcp_nmemranges, vcp_ncpus (vm_create
 *                    takes exactly 1), vcp_memranges[] {vmr_gpa, vmr_va, vmr_size,
 *                    vmr_type}, vcp_name; returns vcp_id and every range's vmr_va.
 *                    The vm_pmap design (vmm.c rev 1.6) maps one uao per range
 *                    into this process and writes its address back into vmr_va;
 *                    the older vmspace design shares the memory this process
 *                    mapped at the vmr_va it passed.  Both work here: each range
 *                    is mapped first, and the address vmm returns is the slot's.
 *   VMM_IOC_RESETCPU struct vm_resetcpu_params {vrp_vm_id, vrp_vcpu_id, vrp_init_state}
 *   VMM_IOC_RUN      struct vm_run_params {vrp_vm_id, vrp_vcpu_id, vrp_inject,
 *                    vrp_intr_pending, vrp_exit, out: vrp_exit_reason, vrp_irqready}
 *   VMM_IOC_TERM     struct vm_terminate_params {vtp_vm_id}
 *
 * The guest runs l2_x86.c's code in 32-bit protected mode with paging off,
 * as on KVM, with the flat segments vmd uses for a 32-bit kernel
 * (usr.sbin/vmd vcpu_init_flat32) and RFLAGS.IF set, so that vmm returns
 * HLT as an exit (svm_handle_hlt/vmx_handle_hlt: EIO with IF clear).  vmm
 * advances RIP past IN/OUT itself, and returns an I/O exit only for the ports
 * vmd emulates (svm_handle_inout/vmx_handle_inout, vmm_machdep.c rev 1.64:
 * 0x40-0x43, 0x3f8-0x3ff, 0xcf8, 0xcfc and the PCI I/O BARs); the guest's
 * "out 0x5a" is absorbed in the kernel, so on OpenBSD the exits are just the
 * final "hlt" (an "io" exit is still reported if one ever comes back).
 *
 * vmm has no read-only or dirty-logged memory and sends accesses outside the
 * RAM ranges to vmd as MMIO, which this program does not emulate: such
 * slot flags and touches are refused up front.  OpenBSD has no
 * /proc/self/pagemap: no "pagemap" events are printed; the frames behind the
 * slots come from the harness (the process's own page tables in L1 memory).
 */
#include <sys/types.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <machine/vmmvar.h>
#include <dev/vmm/vmm.h>

#include "workload.h"

#define CR0_PE_ET	0x11            /* protected mode, paging off */
#define RFLAGS_IF	0x202           /* reserved bit 1 | IF */

static int vmm_fd = -1;

/*
 * The L2 runs l2_x86.c's 32-bit code with paging off, so touches lie below 4 GiB.  vmm
 * takes a long-mode initial state too (vmd boots 64-bit kernels from
 * vcpu_init_flat64: CR0.PG, CR4.PAE, EFER.LME|LMA), which would let l2_x86.c's long-mode
 * path reach higher GPAs here; that is not verified on OpenBSD yet.
 */
uint64_t x86_long_mode_reach(void)
{
	return 0;
}

void hv_open(void)
{
	vmm_fd = open("/dev/vmm", O_RDWR | O_CLOEXEC);
	if (vmm_fd < 0)
		die("open /dev/vmm: %s (vmm(4) needs VMX/EPT or SVM/RVI)", strerror(errno));
}

void hv_check_config(const struct config *cfg)
{
	if (cfg->ipa_bits)
		die("--ipa-bits is for arm64 only");
	if (cfg->nslots > VMM_MAX_MEM_RANGES)
		die("OpenBSD vmm takes at most %d memory ranges", VMM_MAX_MEM_RANGES);
	for (int i = 0; i < cfg->nslots; i++) {
		if (cfg->slots[i].flags)
			die("slot %d: flags (ro, log, huge) are not supported by OpenBSD vmm", i);
		if (i && cfg->slots[i].gpa < cfg->slots[i - 1].gpa)
			die("OpenBSD vmm wants memory ranges in ascending GPA order (slot %d)", i);
	}
	for (int i = 0; i < cfg->ntouches; i++)
		if (!slot_of(cfg, cfg->touches[i].gpa))
			die("touch 0x%llx is outside every slot: vmm would hand it to vmd as MMIO",
			    (unsigned long long)cfg->touches[i].gpa);
}

static void init_state(struct vcpu_reg_state *s, uint64_t rip)
{
	static const struct vcpu_segment_info code = { 0x08, 0xffffffff, 0xc09f, 0 };
	static const struct vcpu_segment_info data = { 0x10, 0xffffffff, 0xc093, 0 };
	static const struct vcpu_segment_info table = { 0x00, 0xffff, 0x0000, 0 };
	static const struct vcpu_segment_info ldtr = { 0x00, 0xffff, 0x0082, 0 };
	static const struct vcpu_segment_info tr = { 0x00, 0xffff, 0x008b, 0 };

	memset(s, 0, sizeof(*s));
	s->vrs_gprs[VCPU_REGS_RIP] = rip;
	s->vrs_gprs[VCPU_REGS_RFLAGS] = RFLAGS_IF;
	s->vrs_crs[VCPU_REGS_CR0] = CR0_PE_ET;
	s->vrs_sregs[VCPU_REGS_CS] = code;
	s->vrs_sregs[VCPU_REGS_DS] = s->vrs_sregs[VCPU_REGS_ES] = data;
	s->vrs_sregs[VCPU_REGS_FS] = s->vrs_sregs[VCPU_REGS_GS] = data;
	s->vrs_sregs[VCPU_REGS_SS] = data;
	s->vrs_sregs[VCPU_REGS_LDTR] = ldtr;
	s->vrs_sregs[VCPU_REGS_TR] = tr;
	s->vrs_gdtr = table;
	s->vrs_idtr = table;
}

static void create(struct vm *vm, const struct config *cfg, struct vm_create_params *vcp)
{
	memset(vcp, 0, sizeof(*vcp));
	vcp->vcp_ncpus = 1;
	vcp->vcp_nmemranges = (size_t)cfg->nslots;
	snprintf(vcp->vcp_name, sizeof(vcp->vcp_name), "slat-%d-%d", (int)getpid(), vm->index);
	for (int i = 0; i < cfg->nslots; i++) {
		struct vm_mem_range *r = &vcp->vcp_memranges[i];
		void *p = mmap(NULL, cfg->slots[i].size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANON, -1, 0);

		if (p == MAP_FAILED)
			die("mmap of %llu bytes: %s", (unsigned long long)cfg->slots[i].size,
			    strerror(errno));
		vm->map_base[i] = p;
		vm->map_len[i] = cfg->slots[i].size;
		r->vmr_gpa = cfg->slots[i].gpa;
		r->vmr_va = (vaddr_t)p;
		r->vmr_size = cfg->slots[i].size;
		r->vmr_type = VM_MEM_RAM;
	}
	if (ioctl(vmm_fd, VMM_IOC_CREATE, vcp) < 0)
		die("vm %d: VMM_IOC_CREATE: %s", vm->index, strerror(errno));
}

void hv_create_vm(struct vm *vm, const struct config *cfg)
{
	struct vm_create_params vcp;
	struct vm_resetcpu_params vrp;

	create(vm, cfg, &vcp);
	vm->vm_id = vcp.vcp_id;
	vm->vcpu_id = 0;
	for (int i = 0; i < cfg->nslots; i++) {
		uint8_t *va = (uint8_t *)vcp.vcp_memranges[i].vmr_va;

		if (va != vm->map_base[i]) {     /* vm_pmap design: vmm mapped a uao */
			munmap(vm->map_base[i], vm->map_len[i]);
			vm->map_base[i] = NULL;
		}
		vm->hva[i] = va;
		tag_slot(vm, cfg, i);
	}
	arch_load_guest(vm, cfg);
	memset(&vrp, 0, sizeof(vrp));
	vrp.vrp_vm_id = vm->vm_id;
	vrp.vrp_vcpu_id = vm->vcpu_id;
	init_state(&vrp.vrp_init_state, l2_x86_entry(cfg));
	if (ioctl(vmm_fd, VMM_IOC_RESETCPU, &vrp) < 0)
		die("vm %d: VMM_IOC_RESETCPU: %s", vm->index, strerror(errno));
	vm->exit = calloc(1, sizeof(struct vm_exit));
	if (!vm->exit)
		die("out of memory");
}

/* 1 when the run is over (HLT), 0 to run on. */
static int handle_exit(struct vm *vm, unsigned reason)
{
	struct vm_exit *e = vm->exit;

	switch (reason) {
	case VM_EXIT_NONE:
		return 0;
	case VMX_EXIT_IO:
	case SVM_VMEXIT_IOIO:
		record_exit(vm, "io", e->vei.vei_port, e->vei.vei_dir == VEI_DIR_OUT);
		return 0;
	case VMX_EXIT_HLT:
	case SVM_VMEXIT_HLT:
		record_exit(vm, "hlt", 0, 0);
		return 1;
	default:
		die("vm %d: unexpected exit %u at rip 0x%llx", vm->index, reason,
		    (unsigned long long)e->vrs.vrs_gprs[VCPU_REGS_RIP]);
	}
}

void hv_run(struct vm *vm, const struct config *cfg)
{
	long budget = 4L * cfg->ntouches + 64;
	struct vm_run_params vrp;

	memset(&vrp, 0, sizeof(vrp));
	vrp.vrp_vm_id = vm->vm_id;
	vrp.vrp_vcpu_id = vm->vcpu_id;
	vrp.vrp_inject.vie_type = VCPU_INJECT_NONE;
	vrp.vrp_exit = vm->exit;
	vrp.vrp_exit_reason = VM_EXIT_NONE;
	while (budget-- > 0) {
		if (ioctl(vmm_fd, VMM_IOC_RUN, &vrp) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("vm %d: VMM_IOC_RUN: %s", vm->index, strerror(errno));
		}
		if (handle_exit(vm, vrp.vrp_exit_reason))
			return;
	}
	die("vm %d: no final exit after %ld VMM_IOC_RUN calls", vm->index,
	    4L * cfg->ntouches + 64);
}

void hv_report_memory(const struct vm *vm, const struct config *cfg)
{
	(void)vm;               /* no /proc/self/pagemap on OpenBSD */
	(void)cfg;
}

void hv_destroy_vm(struct vm *vm, const struct config *cfg)
{
	struct vm_terminate_params vtp;

	memset(&vtp, 0, sizeof(vtp));
	vtp.vtp_vm_id = vm->vm_id;
	if (ioctl(vmm_fd, VMM_IOC_TERM, &vtp) < 0)
		die("vm %d: VMM_IOC_TERM: %s", vm->index, strerror(errno));
	for (int i = 0; i < cfg->nslots; i++)
		if (vm->map_base[i])            /* vmspace design: our own mapping */
			munmap(vm->map_base[i], vm->map_len[i]);
	free(vm->exit);
	vm->exit = NULL;
}

const char *hv_vm_name(const struct vm *vm)
{
	(void)vm;               /* the report pairs OpenBSD VMs by their ranges' addresses */
	return NULL;
}
