/* Stand-in of FreeBSD 14 lib/libvmmapi/vmmapi.h, VMMAPI_VERSION 0200 (see README.md). */
#ifndef _SLAT_SHIM_VMMAPI_H_
#define _SLAT_SHIM_VMMAPI_H_
#include <stddef.h>
#include <stdint.h>
#include <machine/vmm.h>

#define VMMAPI_VERSION 0200

struct vcpu;
struct vmctx;
typedef uint64_t vm_paddr_t;

enum vm_mmap_style { VM_MMAP_NONE, VM_MMAP_ALL, VM_MMAP_SPARSE };

int vm_create(const char *name);
struct vmctx *vm_open(const char *name);
void vm_close(struct vmctx *ctx);
void vm_destroy(struct vmctx *ctx);
struct vcpu *vm_vcpu_open(struct vmctx *ctx, int vcpuid);
void vm_vcpu_close(struct vcpu *vcpu);
int vm_setup_memory(struct vmctx *ctx, size_t len, enum vm_mmap_style s);
void *vm_map_gpa(struct vmctx *ctx, vm_paddr_t gaddr, size_t len);
int vm_set_desc(struct vcpu *vcpu, int reg, uint64_t base, uint32_t limit, uint32_t access);
int vm_set_register(struct vcpu *vcpu, int reg, uint64_t val);
int vm_run(struct vcpu *vcpu, struct vm_run *vmrun);
int vm_set_capability(struct vcpu *vcpu, enum vm_cap_type cap, int val);
int vm_activate_cpu(struct vcpu *vcpu);
#endif
