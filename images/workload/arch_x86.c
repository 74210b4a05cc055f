/*
 * x86 side of slat-workload on KVM: the vCPU and its exits.  It starts in 64-bit
 * long mode (KVM_SET_SREGS: CR0.PG, CR4.PAE, EFER.LME|LMA, a 64-bit code segment)
 * with 4-level paging through the page tables l2_x86.c writes after the guest code,
 * and the CPUID of KVM_GET_SUPPORTED_CPUID (KVM_SET_CPUID2, before EFER.LME, which
 * KVM accepts only with CPUID's LM bit), so the guest's MAXPHYADDR is the one KVM
 * supports (leaf 0x80000008): its touches reach any GPA below it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "workload.h"

#define MAX_CPUID 256
#define CR0_PE_ET_PG 0x80000011ULL
#define CR4_PAE      0x20ULL
#define EFER_LME_LMA 0x500ULL

static struct kvm_cpuid2 *cpuid;        /* KVM_GET_SUPPORTED_CPUID, read once */
static unsigned guest_phys_bits;

static void load_cpuid(void)
{
	if (cpuid)
		return;
	cpuid = calloc(1, sizeof(*cpuid) + MAX_CPUID * sizeof(cpuid->entries[0]));
	if (!cpuid)
		die("out of memory");
	cpuid->nent = MAX_CPUID;
	if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
		die("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
	guest_phys_bits = 36;                   /* the architectural default */
	for (unsigned i = 0; i < cpuid->nent; i++)
		if (cpuid->entries[i].function == 0x80000008)
			guest_phys_bits = cpuid->entries[i].eax & 0xff;
}

unsigned long arch_vm_type(const struct config *cfg)
{
	if (cfg->ipa_bits)
		die("--ipa-bits is for arm64 only");
	return 0;
}

/* Long mode; before /dev/kvm is open the architectural bound (a PTE frame holds 52 bits). */
uint64_t x86_long_mode_reach(void)
{
	if (kvm_fd < 0)
		return 1ULL << 52;
	load_cpuid();
	return 1ULL << guest_phys_bits;
}

static struct kvm_segment segment(uint16_t selector, uint8_t type, int code64)
{
	struct kvm_segment s = {
		.base = 0, .limit = 0xffffffff, .selector = selector, .type = type,
		.present = 1, .dpl = 0, .db = !code64, .s = 1, .l = code64, .g = 1,
	};
	return s;
}

void arch_vcpu_init(struct vm *vm, const struct config *cfg)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	load_cpuid();
	if (ioctl(vm->vcpufd, KVM_SET_CPUID2, cpuid) < 0)      /* before EFER.LME */
		die("KVM_SET_CPUID2: %s", strerror(errno));
	if (ioctl(vm->vcpufd, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS: %s", strerror(errno));
	sregs.cs = segment(0x08, 0x0b, 1);              /* 64-bit code, execute/read, accessed */
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss =
		segment(0x10, 0x03, 0);                 /* data, read/write, accessed */
	sregs.cr3 = l2_x86_cr3(cfg);
	sregs.cr4 = CR4_PAE;
	sregs.efer = EFER_LME_LMA;
	sregs.cr0 = CR0_PE_ET_PG;
	if (ioctl(vm->vcpufd, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS: %s", strerror(errno));
	memset(&regs, 0, sizeof(regs));
	regs.rip = l2_x86_entry(cfg);
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
