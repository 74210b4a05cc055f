/*
 * x86 guest (L2) code of slat-workload, shared by the KVM and OpenBSD vmm
 * backends.  The vCPU runs in 32-bit protected mode with flat 4 GiB segments
 * and paging off, so every GPA below 4 GiB is reachable without guest page
 * tables (which would add pages to the NPT/EPT).
 *
 * Guest code, one fragment per touch, then OUT and HLT:
 *   r:  A1 imm32               mov eax, [gpa]
 *   w:  C7 05 imm32 imm32      mov dword [gpa], WRITE_MARKER
 *   x:  B8 imm32 B9 imm32 FF E1  mov eax, back; mov ecx, gpa; jmp ecx
 *       where the host pre-wrote FF E0 (jmp eax) at gpa
 *   end: E6 5A F4 EB FD        out 0x5a, al; hlt; jmp back to hlt
 */
#include <string.h>

#include "workload.h"

static size_t put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
	return 4;
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
