/* Stand-in of FreeBSD sys/sys/cpuset.h: cpuset_t (see README.md). */
#ifndef _SLAT_SHIM_SYS_CPUSET_H_
#define _SLAT_SHIM_SYS_CPUSET_H_
typedef struct _cpuset { unsigned long __bits[4]; } cpuset_t;
#endif
