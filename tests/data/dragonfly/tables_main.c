/*
 * Test driver for images/workload/vkernel_tables.c on the harness's host:
 *   tables_main REGION_VA REGION_SIZE OUT
 * writes the memory image the DragonFly workload would build to OUT and prints
 * "npages nl1 data_first image_size master_pde" (decimal) and, per region page,
 * "page leaf_offset" for the first and last page; a size the layout refuses
 * prints "refused" and exits 2.
 */
#include <stdio.h>
#include <stdlib.h>

#include "vkernel.h"

int main(int argc, char **argv)
{
	struct vk_layout l;
	unsigned char *image;
	FILE *out;

	if (argc != 4)
		return 1;
	vk_u64 va = strtoull(argv[1], 0, 0), size = strtoull(argv[2], 0, 0);
	if (vk_layout(size, &l)) {
		puts("refused");
		return 2;
	}
	image = calloc(1, l.image_size);
	if (!image)
		return 1;
	vk_build(image, &l, va);
	out = fopen(argv[3], "wb");
	if (!out || fwrite(image, 1, l.image_size, out) != l.image_size || fclose(out))
		return 1;
	printf("%lu %lu %lu %lu %lu\n", l.npages, l.nl1, l.data_first, l.image_size,
	       l.master_pde);
	printf("0 %lu\n%lu %lu\n", vk_leaf_offset(&l, 0), l.npages - 1,
	       vk_leaf_offset(&l, l.npages - 1));
	return 0;
}
