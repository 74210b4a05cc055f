/*
 * x86 guest (L2) code of slat-workload, shared by the KVM and OpenBSD vmm
 * backends.  The backend says how its vCPU starts (x86_long_mode_reach()):
 *
 * Long mode (KVM, arch_x86.c): 64-bit code with 4-level paging through the
 * guest's own page tables, which are generated here after the code.  The
 * tables do not identity-map: every touched page gets its own 4 KiB linear
 * page whose PTE frame is the touched GPA, so a touch reaches any GPA below
 * the guest's MAXPHYADDR (the PTE frame field holds 52 bits) whatever the
 * guest's linear-address width.  Guest-linear layout (one PML4E, one PDPTE,
 * one page directory):
 *   CODE_VA  + i * 4K   page i of the blob (code, then the page tables)
 *   TOUCH_VA + k * 4K   the k-th distinct touched page
 * Accessed and dirty bits are preset in every entry, so the guest's page walks
 * only read its tables.
 *
 * 32-bit protected mode with flat 4 GiB segments and paging off (OpenBSD vmm,
 * hv_openbsd.c): no guest page tables, every GPA below 4 GiB is reached
 * directly.
 *
 * Guest code, one fragment per touch (L = the touch's linear address in long
 * mode, its GPA in 32-bit mode), then OUT and HLT:
 *   r:  8B 04 25 L32 (long)  or  A1 L32 (32-bit)     mov eax, [L]
 *   w:  C7 04 25 L32 imm32  or  C7 05 L32 imm32      mov dword [L], WRITE_MARKER
 *   x:  B8 back32 B9 L32 FF E1                       mov eax, back; mov ecx, L; jmp rcx
 *       where the host pre-wrote FF E0 (jmp rax / jmp eax) at the touched GPA
 *   end: E6 5A F4 EB FD                              out 0x5a, al; hlt; jmp back to hlt
 */
#include <string.h>

#include "workload.h"

#define CODE_VA   0x200000ULL           /* long mode: PD entry 1 */
#define TOUCH_VA  0x400000ULL           /* long mode: PD entries 2.. */
#define PTES      512ULL
#define PTE_P     0x1ULL
#define PTE_RW    0x2ULL
#define PTE_A     0x20ULL
#define PTE_D     0x40ULL
#define TABLE_FLAGS (PTE_P | PTE_RW | PTE_A)
#define LEAF_FLAGS  (PTE_P | PTE_RW | PTE_A | PTE_D)

static uint64_t pml4_offset;            /* long mode: offset of the PML4 in the blob */

static size_t put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
	return 4;
}

uint64_t arch_touch_limit(const struct config *cfg)
{
	uint64_t reach = x86_long_mode_reach();

	(void)cfg;
	return reach ? reach : 1ULL << 32;
}

uint64_t l2_x86_entry(const struct config *cfg)
{
	return x86_long_mode_reach() ? CODE_VA : cfg->code_gpa;
}

uint64_t l2_x86_cr3(const struct config *cfg)
{
	return cfg->code_gpa + pml4_offset;
}

/* One touch; *lin* is its linear address, *here* the linear address of this fragment. */
static size_t gen_touch(const struct touch *t, uint32_t lin, uint32_t here, int longmode,
			uint8_t *p)
{
	size_t n = 0;

	switch (t->access) {
	case 'r':
		if (longmode) {
			p[n++] = 0x8b;
			p[n++] = 0x04;
			p[n++] = 0x25;
		} else {
			p[n++] = 0xa1;
		}
		n += put32(p + n, lin);
		break;
	case 'w':
		p[n++] = 0xc7;
		if (longmode) {
			p[n++] = 0x04;
			p[n++] = 0x25;
		} else {
			p[n++] = 0x05;
		}
		n += put32(p + n, lin);
		n += put32(p + n, WRITE_MARKER);
		break;
	case 'x':
		p[n++] = 0xb8;
		n += put32(p + n, here + 12);
		p[n++] = 0xb9;
		n += put32(p + n, lin);
		p[n++] = 0xff;
		p[n++] = 0xe1;
		break;
	}
	return n;
}

/* The distinct touched pages, in order of first touch: page k is at TOUCH_VA + k * 4K. */
static int touch_pages(const struct config *cfg, uint64_t *pages)
{
	int n = 0;

	for (int i = 0; i < cfg->ntouches; i++) {
		uint64_t page = cfg->touches[i].gpa & ~(PAGE_SIZE - 1);
		int k = 0;

		while (k < n && pages[k] != page)
			k++;
		if (k == n)
			pages[n++] = page;
	}
	return n;
}

static uint32_t linear_of(const uint64_t *pages, int npages, uint64_t gpa)
{
	for (int k = 0; k < npages; k++)
		if (pages[k] == (gpa & ~(PAGE_SIZE - 1)))
			return (uint32_t)(TOUCH_VA + (uint64_t)k * PAGE_SIZE + (gpa & (PAGE_SIZE - 1)));
	die("touch 0x%llx has no linear page", (unsigned long long)gpa);
}

static void put_entry(uint8_t *table, uint64_t index, uint64_t value)
{
	memcpy(table + 8 * index, &value, 8);
}

/*
 * The page tables after the code: PML4, PDPT, PD, the PT of the blob, the PTs of the
 * touched pages.  blob_pages counts every page of the blob, tables included.
 */
static void gen_tables(uint8_t *tables, uint64_t tables_gpa, uint64_t code_gpa,
		       uint64_t blob_pages, const uint64_t *pages, int npages)
{
	uint64_t pml4 = tables_gpa, pdpt = pml4 + PAGE_SIZE, pd = pdpt + PAGE_SIZE;
	uint64_t code_pt = pd + PAGE_SIZE, touch_pt = code_pt + PAGE_SIZE;
	uint8_t *t_pd = tables + 2 * PAGE_SIZE, *t_code = tables + 3 * PAGE_SIZE;

	put_entry(tables, 0, pdpt | TABLE_FLAGS);
	put_entry(tables + PAGE_SIZE, 0, pd | TABLE_FLAGS);
	put_entry(t_pd, CODE_VA >> 21, code_pt | TABLE_FLAGS);
	for (uint64_t i = 0; i < blob_pages; i++)
		put_entry(t_code, i, (code_gpa + i * PAGE_SIZE) | LEAF_FLAGS);
	for (int k = 0; k < npages; k++) {
		uint64_t pt = (uint64_t)k / PTES;

		if (k % PTES == 0)
			put_entry(t_pd, (TOUCH_VA >> 21) + pt, (touch_pt + pt * PAGE_SIZE) | TABLE_FLAGS);
		put_entry(tables + (4 + pt) * PAGE_SIZE, (uint64_t)k % PTES, pages[k] | LEAF_FLAGS);
	}
}

static size_t gen_code(const struct config *cfg, uint64_t base, const uint64_t *pages,
		       int npages, uint8_t *buf, size_t cap)
{
	static const uint8_t tail[] = { 0xe6, SLAT_PORT, 0xf4, 0xeb, 0xfd };
	int longmode = npages >= 0;
	size_t n = 0;

	for (int i = 0; i < cfg->ntouches; i++) {
		const struct touch *t = &cfg->touches[i];
		uint32_t lin = longmode ? linear_of(pages, npages, t->gpa) : (uint32_t)t->gpa;

		if (n + 16 + sizeof(tail) > cap)
			die("too many touches for the code buffer");
		n += gen_touch(t, lin, (uint32_t)(base + n), longmode, buf + n);
	}
	memcpy(buf + n, tail, sizeof(tail));
	return n + sizeof(tail);
}

size_t arch_gen_code(const struct config *cfg, uint64_t code_gpa, uint8_t *buf, size_t cap)
{
	static uint64_t pages[MAX_TOUCHES];
	uint64_t ntables, code_pages, blob_pages;
	int npages;
	size_t n;

	if (!x86_long_mode_reach())
		return gen_code(cfg, code_gpa, NULL, -1, buf, cap);
	npages = touch_pages(cfg, pages);
	ntables = 4 + (npages + PTES - 1) / PTES;
	n = gen_code(cfg, CODE_VA, pages, npages, buf, cap);
	code_pages = (n + PAGE_SIZE - 1) / PAGE_SIZE;
	blob_pages = code_pages + ntables;
	if (blob_pages > PTES || blob_pages * PAGE_SIZE > cap)
		die("guest code and page tables need %llu pages, more than fit",
		    (unsigned long long)blob_pages);
	memset(buf + n, 0, blob_pages * PAGE_SIZE - n);
	pml4_offset = code_pages * PAGE_SIZE;
	gen_tables(buf + pml4_offset, code_gpa + pml4_offset, code_gpa, blob_pages, pages, npages);
	return blob_pages * PAGE_SIZE;
}

/* Copy the guest code into its slot pages and put a "jmp eax" at every x touch. */
void arch_load_guest(struct vm *vm, const struct config *cfg)
{
	static const uint8_t jmp_rax[] = { 0xff, 0xe0 };      /* jmp eax in 32-bit code */

	memcpy(gpa_to_hva(vm, cfg, cfg->code_gpa, cfg->code_len), cfg->code, cfg->code_len);
	for (int i = 0; i < cfg->ntouches; i++) {
		const struct touch *t = &cfg->touches[i];
		uint8_t *p;

		if (t->access != 'x')
			continue;
		p = gpa_to_hva(vm, cfg, t->gpa, sizeof(jmp_rax));
		if (!p)
			die("x touch at 0x%llx is outside every slot", (unsigned long long)t->gpa);
		memcpy(p, jmp_rax, sizeof(jmp_rax));
	}
}
