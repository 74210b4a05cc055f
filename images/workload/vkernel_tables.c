/*
 * VPTE tables for the DragonFly vkernel workload (see vkernel.h for the layout).
 * The walk they must satisfy is vm_fault_vpagetable() (sys/vm/vm_fault.c): from
 * the master PDE with vshift 36, each level indexes its table with
 * (pindex >> vshift) & 511 after vshift -= 9, down to vshift 0.
 */
#include "vkernel.h"

int vk_layout(vk_u64 region_size, struct vk_layout *out)
{
	if (!region_size || region_size % (VK_ENTRIES * VK_PAGE) || region_size > VK_MAX_REGION)
		return -1;
	out->npages = region_size / VK_PAGE;
	out->nl1 = out->npages / VK_ENTRIES;
	out->data_first = 3 + out->nl1;
	out->image_size = (out->data_first + out->npages) * VK_PAGE;
	out->master_pde = 0 | VK_TABLE_BITS;
	return 0;
}

static void put(unsigned char *image, vk_u64 offset, vk_u64 value)
{
	for (int i = 0; i < 8; i++)
		image[offset + (vk_u64)i] = (unsigned char)(value >> (8 * i));
}

vk_u64 vk_leaf_offset(const struct vk_layout *l, vk_u64 page)
{
	(void)l;        /* the level-1 tables start at page 3 whatever the size */
	return (3 + page / VK_ENTRIES) * VK_PAGE + 8 * (page % VK_ENTRIES);
}

void vk_build(unsigned char *image, const struct vk_layout *l, vk_u64 region_va)
{
	put(image, 0, 1 * VK_PAGE | VK_TABLE_BITS);               /* top[0] -> level 3 */
	put(image, VK_PAGE, 2 * VK_PAGE | VK_TABLE_BITS);         /* level3[0] -> level 2 */
	for (vk_u64 t = 0; t < l->nl1; t++)                       /* level2[t] -> level 1 */
		put(image, 2 * VK_PAGE + 8 * t, (3 + t) * VK_PAGE | VK_TABLE_BITS);
	for (vk_u64 p = 0; p < l->npages; p++) {
		vk_u64 data = (l->data_first + p) * VK_PAGE;

		put(image, vk_leaf_offset(l, p), data | VK_TABLE_BITS);
		put(image, data + 0xff8, region_va + p * VK_PAGE);  /* the page's own address */
	}
}
