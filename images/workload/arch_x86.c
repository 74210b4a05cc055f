/*
 * x86 side of slat-workload on KVM: the vCPU in 32-bit protected mode with
 * flat 4 GiB segments and paging off (KVM_SET_SREGS), and its exits.  The
 * guest code is l2_x86.c's.
 */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "workload.h"

unsigned long arch_vm_type(const struct config *cfg)
{
	if (cfg->ipa_bits)
		die("--ipa-bits is for arm64 only");
	return 0;
}

static struct kvm_segment flat_segment(uint16_t selector, uint8_t type)
{
	struct kvm_segment s = {
		.base = 0, .limit = 0xffffffff, .selector = selector, .type = type,
		.present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
	};
	return s;
}

void arch_vcpu_init(struct vm *vm, const struct config *cfg)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	if (ioctl(vm->vcpufd, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS: %s", strerror(errno));
	sregs.cs = flat_segment(0x08, 0x0b);           /* code, execute/read, accessed */
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss =
		flat_segment(0x10, 0x03);              /* data, read/write, accessed */
	sregs.cr0 = 0x11;                              /* PE | ET, paging off */
	sregs.cr4 = 0;
	sregs.efer = 0;
	if (ioctl(vm->vcpufd, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS: %s", strerror(errno));
	memset(&regs, 0, sizeof(regs));
	regs.rip = cfg->code_gpa;
	regs.rflags = 0x2;
	if (ioctl(vm->vcpufd, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS: %s", strerror(errno));
}

__attribute__((noreturn)) static void die_exit(struct vm *vm, const char *what)
{
	struct kvm_regs regs;
	unsigned long long rip = ~0ULL;

	if (ioctl(vm->vcpufd, KVM_GET_REGS, &regs) == 0)
		rip = regs.rip;
	die("vm %d: unexpected exit %s (reason %u) at rip 0x%llx",
	    vm->index, what, vm->run->exit_reason, rip);
}

int arch_handle_exit(struct vm *vm, const struct config *cfg)
{
	struct kvm_run *run = vm->run;

	(void)cfg;
	switch (run->exit_reason) {
	case KVM_EXIT_HLT:
		record_exit(vm, "hlt", 0, 0);
		return 1;
	case KVM_EXIT_IO:
		record_exit(vm, "io", run->io.port, run->io.direction == KVM_EXIT_IO_OUT);
		return 0;
	case KVM_EXIT_MMIO:
		record_exit(vm, "mmio", run->mmio.phys_addr, run->mmio.is_write);
		if (!run->mmio.is_write)
			memset(run->mmio.data, 0, sizeof(run->mmio.data));
		return 0;
	case KVM_EXIT_SHUTDOWN:
		die_exit(vm, "shutdown (triple fault)");
	case KVM_EXIT_FAIL_ENTRY:
		die_exit(vm, "fail_entry");
	case KVM_EXIT_INTERNAL_ERROR:
		die_exit(vm, "internal_error");
	default:
		die_exit(vm, "other");
	}
}
