/*
 * x86 side of slat-workload: the vCPU runs in 32-bit protected mode with flat
 * 4 GiB segments and paging off (KVM_SET_SREGS), so every GPA below 4 GiB is
 * reachable without guest page tables (which would add pages to the NPT/EPT).
 *
 * Guest code, one fragment per touch, then OUT and HLT:
 *   r:  A1 imm32               mov eax, [gpa]
 *   w:  C7 05 imm32 imm32      mov dword [gpa], WRITE_MARKER
 *   x:  B8 imm32 B9 imm32 FF E1  mov eax, back; mov ecx, gpa; jmp ecx
 *       where the host pre-wrote FF E0 (jmp eax) at gpa
 *   end: E6 5A F4 EB FD        out 0x5a, al; hlt; jmp back to hlt
 */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "workload.h"

#define SLAT_PORT 0x5a

static size_t put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
	return 4;
}

unsigned long arch_vm_type(const struct config *cfg)
{
	if (cfg->ipa_bits)
		die("--ipa-bits is for arm64 only");
	return 0;
}

uint64_t arch_touch_limit(const struct config *cfg)
{
	(void)cfg;
	return 1ULL << 32;
}

static size_t gen_touch(const struct touch *t, uint32_t here, uint8_t *p)
{
	size_t n = 0;

	switch (t->access) {
	case 'r':
		p[n++] = 0xa1;
		n += put32(p + n, (uint32_t)t->gpa);
		break;
	case 'w':
		p[n++] = 0xc7;
		p[n++] = 0x05;
		n += put32(p + n, (uint32_t)t->gpa);
		n += put32(p + n, WRITE_MARKER);
		break;
	case 'x':
		p[n++] = 0xb8;
		n += put32(p + n, here + 12);
		p[n++] = 0xb9;
		n += put32(p + n, (uint32_t)t->gpa);
		p[n++] = 0xff;
		p[n++] = 0xe1;
		break;
	}
	return n;
}

size_t arch_gen_code(const struct config *cfg, uint64_t code_gpa, uint8_t *buf, size_t cap)
{
	static const uint8_t tail[] = { 0xe6, SLAT_PORT, 0xf4, 0xeb, 0xfd };
	size_t n = 0;

	for (int i = 0; i < cfg->ntouches; i++) {
		if (n + 16 + sizeof(tail) > cap)
			die("too many touches for the code buffer");
		n += gen_touch(&cfg->touches[i], (uint32_t)(code_gpa + n), buf + n);
	}
	memcpy(buf + n, tail, sizeof(tail));
	return n + sizeof(tail);
}

void arch_prepare_memory(const struct vm *vm, const struct config *cfg)
{
	static const uint8_t jmp_eax[] = { 0xff, 0xe0 };

	for (int i = 0; i < cfg->ntouches; i++) {
		const struct touch *t = &cfg->touches[i];
		uint8_t *p;

		if (t->access != 'x')
			continue;
		p = gpa_to_hva(vm, cfg, t->gpa, sizeof(jmp_eax));
		if (!p)
			die("x touch at 0x%llx is outside every slot", (unsigned long long)t->gpa);
		memcpy(p, jmp_eax, sizeof(jmp_eax));
	}
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
