/*
 * The structures DragonFly vkernel discovery reads, shaped like DragonFly 6.x's
 * (sys/proc.h, sys/vkernel.h, vm/vm_map.h, vm/vm_object.h, vm/vm_page.h,
 * platform/pc64/include/pmap.h), for the tests: gcc's DWARF of this file stands in for
 * a kernel.debug.  With -DDFLY_OLD the map is the older list (header.next, entries
 * with start/end/object.vm_object/offset) and the process lists are procglob[].
 * The globals give the ELF the symbols a kernel has (allprocs or procglob).
 */
#include <stdint.h>

typedef unsigned long vm_offset_t;
typedef unsigned long vpte_t;
typedef unsigned long vm_pindex_t;
typedef unsigned long vm_paddr_t;
typedef long vm_ooffset_t;
typedef unsigned char vm_maptype_t;
typedef unsigned char vm_prot_t;
typedef unsigned int vm_eflags_t;
typedef int pid_t;

#define RB_ENTRY(type) struct { struct type *rbe_left, *rbe_right, *rbe_parent; int rbe_color; }
#define RB_HEAD(name, type) struct name { struct type *rbh_root; struct type *rbh_inprog; long rbh_spin; }
#define LIST_ENTRY(type) struct { struct type *le_next; struct type **le_prev; }
#define LIST_HEAD(name, type) struct name { struct type *lh_first; }

struct lwkt_token { long t_count; void *t_ref; const char *t_desc; };

struct vm_page {
	RB_ENTRY(vm_page) rb_entry;
	struct vm_object *object;
	vm_pindex_t pindex;
	vm_paddr_t phys_addr;
	unsigned short busy_count;
	unsigned char queue, pc;
};
RB_HEAD(vm_page_rb_tree, vm_page);

struct vm_object {
	struct lwkt_token token;
	long lock[3];
	struct vm_page_rb_tree rb_memq;
	int generation;
	vm_pindex_t size;
	int ref_count;
	unsigned char type;
	unsigned short flags;
	unsigned long resident_page_count;
};

union vm_map_aux {
	vm_offset_t avail_ssize;
	vpte_t master_pde;
	void *dev;
	void *map_aux;
};

#ifndef DFLY_OLD
struct vm_map_backing {
	vm_offset_t start;
	vm_offset_t end;
	struct pmap *pmap;
	struct vm_map_backing *backing_ba;
	struct { struct vm_map_backing *tqe_next, **tqe_prev; } entry;
	union {
		struct vm_object *object;
		struct vm_map *sub_map;
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
};
RB_HEAD(vm_map_rb_tree, vm_map_entry);

struct vm_map {
	struct lwkt_token token;
	long lock[4];
	struct vm_map_rb_tree rb_root;
	vm_offset_t min_addr;
	vm_offset_t max_addr;
	int nentries;
	struct pmap *pmap;
};
#else
union vm_map_object {
	struct vm_object *vm_object;
	struct vm_map *sub_map;
};

struct vm_map_entry {
	struct vm_map_entry *prev;
	struct vm_map_entry *next;
	RB_ENTRY(vm_map_entry) rb_entry;
	vm_offset_t start;
	vm_offset_t end;
	union vm_map_aux aux;
	union vm_map_object object;
	vm_ooffset_t offset;
	vm_eflags_t eflags;
	vm_maptype_t maptype;
	vm_prot_t protection;
	vm_prot_t max_protection;
	unsigned char inheritance;
	int wired_count;
};

struct vm_map {
	struct vm_map_entry header;
	long lock[4];
	int nentries;
	vm_offset_t size;
	struct pmap *pmap;
};
#endif

struct pmap {
	volatile unsigned long *pm_pml4;
	struct vm_page *pm_pdirm;
	void *pm_pmlpv;
	long pm_stats[4];
	int pm_count;
	unsigned int pm_flags;
};

struct vmspace {
	struct vm_map vm_map;
	struct pmap vm_pmap;
	int vm_flags;
	char *vm_taddr;
	int vm_refcnt;
};

struct vmspace_entry {
	void *id;
	struct vmspace *vmspace;
	int flags;
	int refs;
	RB_ENTRY(vmspace_entry) rb_entry;
};
RB_HEAD(vmspace_rb_tree, vmspace_entry);

struct vkernel_proc {
	struct vmspace_rb_tree root;
	struct lwkt_token token;
	int refs;
};

struct proc {
	LIST_ENTRY(proc) p_list;
	long p_ucred_etc[3];
	struct vmspace *p_vmspace;
	int p_flags;
	int p_stat;
	pid_t p_pid;
	char p_comm[17];
	struct vkernel_proc *p_vkernel;
	int p_nthreads;
};
LIST_HEAD(proclist, proc);

#ifndef DFLY_OLD
struct proclist allprocs[256];
#else
struct procglob {
	struct lwkt_token proc_token;
	struct proclist allproc;
	long pad[2];
};
struct procglob procglob[256];
#endif

struct vmspace a_vmspace;
struct vkernel_proc a_vkernel_proc;
struct vmspace_entry a_vmspace_entry;
struct vm_page a_page;

int main(void)
{
	return (int)(a_vmspace.vm_flags + a_vkernel_proc.refs + a_vmspace_entry.refs +
		     (int)a_page.pindex);
}
