/*
 * The DragonFly vkernel workload's page-table builder: VPTE tables inside a
 * memory image, the way a vkernel keeps them (sys/sys/vkernel.h, the x86-like
 * layout: VPTE_V 0x1, VPTE_RW 0x2, VPTE_U 0x4, VPTE_A 0x20, VPTE_M 0x40,
 * VPTE_PS 0x80; frames are byte offsets into the image).
 *
 * No system header is included: DragonFly's live image ships no /usr/include,
 * and vkernel_tables.c is also built on the harness's host by the tests.
 */
#ifndef SLAT_VKERNEL_H
#define SLAT_VKERNEL_H

typedef unsigned long vk_u64;
typedef unsigned long vk_size;

#define VK_PAGE		4096UL
#define VK_ENTRIES	512UL
#define VPTE_V		0x1UL
#define VPTE_RW		0x2UL
#define VPTE_U		0x4UL
#define VPTE_FRAME	0x000ffffffffff000UL
#define VK_TABLE_BITS	(VPTE_V | VPTE_RW | VPTE_U)
#define VK_MAX_REGION	(1UL << 30)     /* one level-3 entry: up to 1 GiB */

/*
 * Image layout for a region of npages pages (npages a multiple of 512):
 *   page 0       the top table (vshift 27: the master PDE points here)
 *   page 1       the level-3 table (vshift 18)
 *   page 2       the level-2 table (vshift 9): one entry per 2 MiB
 *   pages 3..    one level-1 table per 2 MiB (vshift 0: 4 KiB leaves)
 *   then         the data pages, region page i at data_page(i)
 */
struct vk_layout {
	vk_u64 npages;          /* region pages */
	vk_u64 nl1;             /* level-1 tables */
	vk_u64 data_first;      /* image page of region page 0 */
	vk_u64 image_size;      /* bytes */
	vk_u64 master_pde;      /* the MADV_SETMAP value: page 0 | V | RW | U */
};

/* 0 and *out filled, or -1 when the region size is not usable. */
int vk_layout(vk_u64 region_size, struct vk_layout *out);
/* Write the tables and tag every data page (its region address at 0xff8). */
void vk_build(unsigned char *image, const struct vk_layout *l, vk_u64 region_va);
/* Byte offset in the image of the leaf VPTE that maps region page *page*. */
vk_u64 vk_leaf_offset(const struct vk_layout *l, vk_u64 page);

#endif
