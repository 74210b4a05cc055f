/*
 * Structs shaped like DragonFly's vm_map_entry, vm_map_backing, vmspace, pmap and
 * vm_page (sys/vm/vm_map.h, vm_page.h, platform/pc64/include/pmap.h, 6.x), for the
 * DWARF reader's tests.  main() prints the compiler's own offsetof/sizeof values,
 * the oracle the reader is checked against.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef unsigned long vm_offset_t;
typedef unsigned long vpte_t;
typedef unsigned long vm_pindex_t;
typedef unsigned long vm_paddr_t;
typedef long vm_ooffset_t;
typedef unsigned char vm_maptype_t;
typedef unsigned char vm_prot_t;
typedef unsigned int vm_eflags_t;

struct pmap;
struct vm_object;
struct cdev;

#define RB_ENTRY(type) struct { struct type *rbe_left, *rbe_right, *rbe_parent; int rbe_color; }
#define RB_HEAD(name, type) struct name { struct type *rbh_root; struct type *rbh_inprog; }

union vm_map_aux {
	vm_offset_t avail_ssize;
	vpte_t master_pde;
	struct cdev *dev;
	void *map_aux;
};

typedef enum { VM_SUBSYS_UNKNOWN, VM_SUBSYS_KMALLOC, VM_SUBSYS_STACK } vm_subsys_t;

struct vm_map_backing {
	vm_offset_t start;
	vm_offset_t end;
	struct pmap *pmap;
	struct vm_map_backing *backing_ba;
	struct { struct vm_map_backing *tqe_next, **tqe_prev; } entry;
	union {
		struct vm_object *object;
		struct vm_map *sub_map;
		int (*uksmap)(struct vm_map_backing *, int, struct cdev *, void *);
		void *map_object;
	};
	void *aux_info;
	vm_ooffset_t offset;
	uint32_t flags;
	uint32_t backing_count;
};

struct vm_map_entry {
	RB_ENTRY(vm_map_entry) rb_entry;
	union vm_map_aux aux;
	struct vm_map_backing ba;
	vm_eflags_t eflags;
	vm_maptype_t maptype;
	vm_prot_t protection;
	vm_prot_t max_protection;
	unsigned char inheritance;
	int wired_count;
	vm_subsys_t id;
};

RB_HEAD(vm_map_rb_tree, vm_map_entry);

struct pmap {
	volatile unsigned long *pm_pml4;
	struct vm_page *pm_pdirm;
	vm_paddr_t pm_pml4_phys[2][3];
	const char *const pm_name;
	unsigned int pm_flags : 3, pm_type : 5, pm_gen : 24;
	int pm_count;
};

struct vm_map {
	long lock[4];
	struct vm_map_rb_tree rb_root;
	vm_offset_t min_addr;
	vm_offset_t max_addr;
	int nentries;
	struct pmap *pmap;
};

struct vmspace {
	struct vm_map vm_map;
	struct pmap vm_pmap;
	int vm_flags;
	_Bool vm_exiting;
	signed char vm_small;
	char vm_tail[];
};

struct vm_page {
	struct { struct vm_page *rbe_left, *rbe_right, *rbe_parent; int rbe_color; } rb_entry;
	struct vm_object *object;
	vm_pindex_t pindex;
	vm_paddr_t phys_addr;
};

static struct vmspace a_vmspace;
static struct vm_map_entry an_entry;
static struct vm_page a_page;
static struct pmap bits_probe;

/* Bit position and width of a bitfield, found by setting it in a zeroed struct. */
static void bitfield(const char *name)
{
	const unsigned char *raw = (const unsigned char *)&bits_probe;
	int first = -1, width = 0;

	for (size_t i = 0; i < 8 * sizeof(bits_probe); i++)
		if (raw[i / 8] >> (i % 8) & 1) {
			if (first < 0)
				first = (int)i;
			width++;
		}
	printf("pmap %s bits %d %d\n", name, first, width);
	memset(&bits_probe, 0, sizeof(bits_probe));
}

#define P(T, M) printf(#T " " #M " %zu\n", offsetof(struct T, M))
#define S(T) printf(#T " sizeof %zu\n", sizeof(struct T))

int main(void)
{
	P(vm_map_entry, rb_entry.rbe_right); P(vm_map_entry, aux.master_pde);
	P(vm_map_entry, ba.start); P(vm_map_entry, ba.end); P(vm_map_entry, ba.object);
	P(vm_map_entry, ba.offset); P(vm_map_entry, ba.entry.tqe_prev);
	P(vm_map_entry, maptype); P(vm_map_entry, protection); P(vm_map_entry, id);
	P(vmspace, vm_map.rb_root.rbh_root); P(vmspace, vm_map.pmap); P(vmspace, vm_pmap);
	P(vmspace, vm_pmap.pm_pml4_phys[1][2]); P(vmspace, vm_pmap.pm_count);
	P(vmspace, vm_flags); P(vmspace, vm_small); P(vmspace, vm_tail);
	P(vm_page, pindex); P(vm_page, phys_addr);
	S(vm_map_entry); S(vm_map_backing); S(vmspace); S(pmap); S(vm_page);
	bits_probe.pm_flags = 7; bitfield("pm_flags");
	bits_probe.pm_type = 31; bitfield("pm_type");
	bits_probe.pm_gen = 0xffffff; bitfield("pm_gen");
	return (int)(a_vmspace.vm_flags + an_entry.wired_count + (int)a_page.pindex);
}
