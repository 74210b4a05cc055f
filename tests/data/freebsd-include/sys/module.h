/* Stand-in of FreeBSD sys/sys/module.h: modfind(2) (see README.md). */
#ifndef _SLAT_SHIM_SYS_MODULE_H_
#define _SLAT_SHIM_SYS_MODULE_H_
int modfind(const char *modname);
#endif
