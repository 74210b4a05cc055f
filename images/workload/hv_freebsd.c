/*
 * The FreeBSD bhyve backend of slat-workload, built in the FreeBSD guest by its
 * own cc with -DSLAT_FREEBSD and libvmmapi (main.c, hv_freebsd.c, l2_x86.c,
 * -lvmmapi).
 *
 * Written against libvmmapi's vmmapi.h with VMMAPI_VERSION 0200 (FreeBSD 14:
 * struct vcpu handles, vm_run(vcpu, struct vm_run *)) and amd64
 * machine/vmm.h's struct vm_exit:
 *
 *   vm_create(name), vm_open(name)    /dev/vmm/<name>
 *   vm_setup_memory(ctx, memsize, VM_MMAP_ALL)
 *                     one VM_SYSMEM segment mapped at GPA [0, memsize), memsize
 *                     the end of the highest slot (below the 3 GiB lowmem limit,
 *                     so there is no high segment); the segment is mapped in this
 *                     process, and vm_map_gpa(ctx, gpa, len) is a slot's address
 *   vm_vcpu_open(ctx, 0); vm_set_capability(VM_CAP_UNRESTRICTED_GUEST) on VMX
 *                     (the guest runs with paging off) and VM_CAP_HALT_EXIT;
 *                     either may be refused on SVM, which needs neither
 *   vm_set_register / vm_set_desc: 32-bit protected mode, flat segments, paging
 *                     off, RFLAGS.IF clear (as on KVM)
 *   vm_activate_cpu, vm_run until the HLT: vm_handle_hlt() sees IF clear on the
 *                     only vCPU and suspends the VM (VM_SUSPEND_HALT), so the last
 *                     exit is VM_EXITCODE_SUSPENDED (or VM_EXITCODE_HLT where it
 *                     reaches user space); the "out 0x5a" is VM_EXITCODE_INOUT
 *                     (no in-kernel device claims the port) and the kernel
 *                     resumes after it (nextrip = rip + inst_length)
 *   vm_vcpu_close, vm_destroy(ctx)
 *
 * Every slot lies in that one segment, so the memory between slots is guest RAM
 * as well: touches outside every slot are refused up front (they would not be
 * MMIO on bhyve), and so are slot flags (no read-only or dirty-logged memory).
 * The VM is named "slat-<pid>-<cycle>-<index>" and reported with that name: the
 * harness finds it as /dev/vmm/<name> in L1 memory.  FreeBSD has no
 * /proc/self/pagemap: no "pagemap" events; the frames come from this process's
 * own page tables in L1 memory.
 */
#include <sys/param.h>
#include <sys/cpuset.h>
#include <sys/module.h>

#include <machine/vmm.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <vmmapi.h>

#include "workload.h"

#define CR0_PE_ET	0x11            /* protected mode, paging off */
#define RFLAGS_RSVD	0x2             /* reserved bit 1; IF clear */
#define LOWMEM_LIMIT	(3ULL << 30)    /* libvmmapi's default lowmem limit */
#define ACC_CODE	0xc09b          /* G, D/B, P, S, execute/read accessed */
#define ACC_DATA	0xc093          /* G, D/B, P, S, read/write accessed */
#define ACC_TSS		0x008b          /* P, busy 32-bit TSS */
#define ACC_UNUSABLE	0x10000         /* VMX "unusable" segment */

static uint64_t memsize;

/*
 * The L2 runs l2_x86.c's 32-bit code with paging off (below 4 GiB; every slot lies
 * below the 3 GiB lowmem limit here anyway).
 */
uint64_t x86_long_mode_reach(void)
{
	return 0;
}

void hv_open(void)
{
	if (modfind("vmm") < 0)
		die("vmm.ko is not loaded (kldload vmm): %s", strerror(errno));
}

void hv_check_config(const struct config *cfg)
{
	if (cfg->ipa_bits)
		die("--ipa-bits is for arm64 only");
	memsize = 0;
	for (int i = 0; i < cfg->nslots; i++) {
		if (cfg->slots[i].flags)
			die("slot %d: flags (ro, log, huge) are not supported by bhyve", i);
		if (cfg->slots[i].gpa + cfg->slots[i].size > memsize)
			memsize = cfg->slots[i].gpa + cfg->slots[i].size;
	}
	if (memsize > LOWMEM_LIMIT)
		die("slots end at 0x%llx, above bhyve's 3 GiB lowmem limit",
		    (unsigned long long)memsize);
	for (int i = 0; i < cfg->ntouches; i++)
		if (!slot_of(cfg, cfg->touches[i].gpa))
			die("touch 0x%llx is outside every slot: on bhyve it is RAM of the "
			    "system segment, not MMIO", (unsigned long long)cfg->touches[i].gpa);
}

static void set_reg(struct vm *vm, int reg, uint64_t val, const char *what)
{
	if (vm_set_register(vm->vcpu, reg, val))
		die("vm %d: vm_set_register(%s): %s", vm->index, what, strerror(errno));
}

static void set_desc(struct vm *vm, int reg, uint32_t limit, uint32_t access,
		     const char *what)
{
	if (vm_set_desc(vm->vcpu, reg, 0, limit, access))
		die("vm %d: vm_set_desc(%s): %s", vm->index, what, strerror(errno));
}

static void init_vcpu(struct vm *vm, const struct config *cfg)
{
	static const int data[] = { VM_REG_GUEST_DS, VM_REG_GUEST_ES, VM_REG_GUEST_FS,
				    VM_REG_GUEST_GS, VM_REG_GUEST_SS };

	/* VMX needs unrestricted guest for paging off; SVM refuses the capability */
	(void)vm_set_capability(vm->vcpu, VM_CAP_UNRESTRICTED_GUEST, 1);
	(void)vm_set_capability(vm->vcpu, VM_CAP_HALT_EXIT, 1);
	set_desc(vm, VM_REG_GUEST_CS, 0xffffffff, ACC_CODE, "cs");
	for (size_t i = 0; i < sizeof(data) / sizeof(data[0]); i++) {
		set_desc(vm, data[i], 0xffffffff, ACC_DATA, "data segment");
		set_reg(vm, data[i], 0x10, "data selector");
	}
	set_desc(vm, VM_REG_GUEST_TR, 0, ACC_TSS, "tr");
	set_desc(vm, VM_REG_GUEST_LDTR, 0, ACC_UNUSABLE, "ldtr");
	set_desc(vm, VM_REG_GUEST_GDTR, 0, 0, "gdtr");
	set_desc(vm, VM_REG_GUEST_IDTR, 0, 0, "idtr");
	set_reg(vm, VM_REG_GUEST_CS, 0x08, "cs selector");
	set_reg(vm, VM_REG_GUEST_TR, 0, "tr selector");
	set_reg(vm, VM_REG_GUEST_LDTR, 0, "ldtr selector");
	set_reg(vm, VM_REG_GUEST_EFER, 0, "efer");
	set_reg(vm, VM_REG_GUEST_CR4, 0, "cr4");
	set_reg(vm, VM_REG_GUEST_CR3, 0, "cr3");
	set_reg(vm, VM_REG_GUEST_CR0, CR0_PE_ET, "cr0");
	set_reg(vm, VM_REG_GUEST_RFLAGS, RFLAGS_RSVD, "rflags");
	set_reg(vm, VM_REG_GUEST_RSP, 0, "rsp");
	set_reg(vm, VM_REG_GUEST_RIP, l2_x86_entry(cfg), "rip");
	if (vm_activate_cpu(vm->vcpu))
		die("vm %d: vm_activate_cpu: %s", vm->index, strerror(errno));
}

void hv_create_vm(struct vm *vm, const struct config *cfg)
{
	snprintf(vm->name, sizeof(vm->name), "slat-%d-%d-%d", (int)getpid(), vm->cycle,
		 vm->index);
	if (vm_create(vm->name))
		die("vm %d: vm_create(%s): %s", vm->index, vm->name, strerror(errno));
	vm->ctx = vm_open(vm->name);
	if (!vm->ctx)
		die("vm %d: vm_open(%s): %s", vm->index, vm->name, strerror(errno));
	if (vm_setup_memory(vm->ctx, memsize, VM_MMAP_ALL))
		die("vm %d: vm_setup_memory(%llu): %s", vm->index,
		    (unsigned long long)memsize, strerror(errno));
	for (int i = 0; i < cfg->nslots; i++) {
		vm->hva[i] = vm_map_gpa(vm->ctx, cfg->slots[i].gpa, cfg->slots[i].size);
		if (!vm->hva[i])
			die("vm %d: vm_map_gpa of slot %d failed", vm->index, i);
		tag_slot(vm, cfg, i);
	}
	arch_load_guest(vm, cfg);
	vm->vcpu = vm_vcpu_open(vm->ctx, 0);
	if (!vm->vcpu)
		die("vm %d: vm_vcpu_open: %s", vm->index, strerror(errno));
	vm->exit = calloc(1, sizeof(struct vm_exit));
	if (!vm->exit)
		die("out of memory");
	init_vcpu(vm, cfg);
}

/* 1 when the run is over (the guest halted), 0 to run on. */
static int handle_exit(struct vm *vm)
{
	const struct vm_exit *e = vm->exit;

	switch (e->exitcode) {
	case VM_EXITCODE_INOUT:
		record_exit(vm, "io", e->u.inout.port, !e->u.inout.in);
		return 0;
	case VM_EXITCODE_HLT:
		record_exit(vm, "hlt", 0, 0);
		return 1;
	case VM_EXITCODE_SUSPENDED:
		if (e->u.suspended.how != VM_SUSPEND_HALT)
			die("vm %d: suspended (how %d) at rip 0x%llx, not by the final hlt",
			    vm->index, (int)e->u.suspended.how, (unsigned long long)e->rip);
		record_exit(vm, "hlt", 0, 0);
		return 1;
	case VM_EXITCODE_BOGUS:
	case VM_EXITCODE_REQIDLE:
		return 0;
	default:
		die("vm %d: unexpected exit %d at rip 0x%llx", vm->index, (int)e->exitcode,
		    (unsigned long long)e->rip);
	}
}

void hv_run(struct vm *vm, const struct config *cfg)
{
	long budget = 4L * cfg->ntouches + 64;
	cpuset_t dmask;
	struct vm_run vmrun;

	while (budget-- > 0) {
		memset(&vmrun, 0, sizeof(vmrun));
		vmrun.vm_exit = vm->exit;
		vmrun.cpuset = &dmask;
		vmrun.cpusetsize = sizeof(dmask);
		if (vm_run(vm->vcpu, &vmrun)) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("vm %d: vm_run: %s", vm->index, strerror(errno));
		}
		if (handle_exit(vm))
			return;
	}
	die("vm %d: no final exit after %ld vm_run calls", vm->index, 4L * cfg->ntouches + 64);
}

void hv_report_memory(const struct vm *vm, const struct config *cfg)
{
	(void)vm;               /* no /proc/self/pagemap on FreeBSD */
	(void)cfg;
}

void hv_destroy_vm(struct vm *vm, const struct config *cfg)
{
	(void)cfg;
	vm_vcpu_close(vm->vcpu);
	vm_destroy(vm->ctx);    /* unmaps the guest memory from this process too */
	free(vm->exit);
	vm->exit = NULL;
}

const char *hv_vm_name(const struct vm *vm)
{
	return vm->name;
}
