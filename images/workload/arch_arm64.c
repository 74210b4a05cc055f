/*
 * arm64 side of slat-workload: the vCPU starts at EL1 with the MMU off
 * (KVM_ARM_VCPU_INIT, PSCI 0.2), so every IPA is reached without guest page
 * tables.  With the MMU off data accesses are Device memory: touches must be
 * 4-byte aligned.
 *
 * Guest code, one fragment per touch (x1 = GPA via movz/movk), then PSCI
 * SYSTEM_OFF through HVC (KVM_EXIT_SYSTEM_EVENT):
 *   r:  ldr w0, [x1]
 *   w:  str w2, [x1]            (w2 = WRITE_MARKER, set once at the start)
 *   x:  blr x1                  (the host pre-wrote "ret" at GPA)
 *   end: x0 = 0x84000008; hvc #0; b .
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>

#include "workload.h"

#define A64_LDR_W0_X1  0xb9400020u
#define A64_STR_W2_X1  0xb9000022u
#define A64_BLR_X1     0xd63f0020u
#define A64_RET        0xd65f03c0u
#define A64_HVC0       0xd4000002u
#define A64_B_SELF     0x14000000u
#define PSCI_SYSTEM_OFF 0x84000008u
#define DEFAULT_IPA_BITS 40

static size_t put_insn(uint8_t *p, uint32_t insn)
{
	memcpy(p, &insn, 4);
	return 4;
}

/* movz/movk xREG, imm64 in four instructions. */
static size_t put_mov64(uint8_t *p, unsigned reg, uint64_t v)
{
	size_t n = 0;

	for (unsigned hw = 0; hw < 4; hw++) {
		uint32_t base = hw ? 0xf2800000u : 0xd2800000u;   /* movk : movz, 64-bit */
		n += put_insn(p + n, base | (hw << 21) | (uint32_t)((v >> (16 * hw)) & 0xffff) << 5 | reg);
	}
	return n;
}

unsigned long arch_vm_type(const struct config *cfg)
{
	return cfg->ipa_bits ? KVM_VM_TYPE_ARM_IPA_SIZE(cfg->ipa_bits) : 0;
}

uint64_t arch_touch_limit(const struct config *cfg)
{
	return 1ULL << (cfg->ipa_bits ? cfg->ipa_bits : DEFAULT_IPA_BITS);
}

size_t arch_gen_code(const struct config *cfg, uint64_t code_gpa, uint8_t *buf, size_t cap)
{
	size_t n = 0;

	(void)code_gpa;
	n += put_mov64(buf + n, 2, WRITE_MARKER);
	for (int i = 0; i < cfg->ntouches; i++) {
		const struct touch *t = &cfg->touches[i];

		if (t->gpa % 4)
			die("arm64 touch 0x%llx is not 4-byte aligned", (unsigned long long)t->gpa);
		if (n + 48 > cap)
			die("too many touches for the code buffer");
		n += put_mov64(buf + n, 1, t->gpa);
		n += put_insn(buf + n, t->access == 'r' ? A64_LDR_W0_X1 :
			      t->access == 'w' ? A64_STR_W2_X1 : A64_BLR_X1);
	}
	n += put_mov64(buf + n, 0, PSCI_SYSTEM_OFF);
	n += put_insn(buf + n, A64_HVC0);
	n += put_insn(buf + n, A64_B_SELF);
	return n;
}

/* Copy the guest code into its slot pages and put a "ret" at every x touch. */
void arch_load_guest(struct vm *vm, const struct config *cfg)
{
	memcpy(gpa_to_hva(vm, cfg, cfg->code_gpa, cfg->code_len), cfg->code, cfg->code_len);
	for (int i = 0; i < cfg->ntouches; i++) {
		const struct touch *t = &cfg->touches[i];
		uint8_t *p;

		if (t->access != 'x')
			continue;
		p = gpa_to_hva(vm, cfg, t->gpa, 4);
		if (!p)
			die("x touch at 0x%llx is outside every slot", (unsigned long long)t->gpa);
		put_insn(p, A64_RET);
	}
}

void arch_vcpu_init(struct vm *vm, const struct config *cfg)
{
	struct kvm_vcpu_init init;
	uint64_t pc = cfg->code_gpa;
	struct kvm_one_reg reg = {
		.id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE |
		      (offsetof(struct kvm_regs, regs.pc) / sizeof(uint32_t)),
		.addr = (uintptr_t)&pc,
	};

	if (ioctl(vm->vmfd, KVM_ARM_PREFERRED_TARGET, &init) < 0)
		die("KVM_ARM_PREFERRED_TARGET: %s", strerror(errno));
	init.features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;
	if (ioctl(vm->vcpufd, KVM_ARM_VCPU_INIT, &init) < 0)
		die("KVM_ARM_VCPU_INIT: %s", strerror(errno));
	if (ioctl(vm->vcpufd, KVM_SET_ONE_REG, &reg) < 0)
		die("KVM_SET_ONE_REG pc: %s", strerror(errno));
}

int arch_handle_exit(struct vm *vm, const struct config *cfg)
{
	struct kvm_run *run = vm->run;

	(void)cfg;
	switch (run->exit_reason) {
	case KVM_EXIT_SYSTEM_EVENT:
		record_exit(vm, "system_event", 0, 0);
		if (run->system_event.type != KVM_SYSTEM_EVENT_SHUTDOWN)
			die("vm %d: system event %u, expected shutdown", vm->index,
			    run->system_event.type);
		return 1;
	case KVM_EXIT_MMIO:
		record_exit(vm, "mmio", run->mmio.phys_addr, run->mmio.is_write);
		if (!run->mmio.is_write)
			memset(run->mmio.data, 0, sizeof(run->mmio.data));
		return 0;
	default:
		die("vm %d: unexpected exit reason %u", vm->index, run->exit_reason);
	}
}
