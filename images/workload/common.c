/*
 * What every part of slat-workload shares: the report lines ("@@SLAT {json}" on
 * stdout, one writer at a time), the fatal error, and the slot bookkeeping (which
 * slot holds a GPA, its host address, the GPA tags, the exit records).  It calls
 * nothing of the hypervisor backends, the guest code or main.c.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h"

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void vemit(const char *fmt, va_list ap)
{
	pthread_mutex_lock(&out_lock);
	fputs("@@SLAT ", stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
}

void emit(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vemit(fmt, ap);
	va_end(ap);
}

void die(const char *fmt, ...)
{
	char msg[512], *p;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (p = msg; *p; p++)          /* keep the JSON string trivially valid */
		if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
			*p = '\'';
	emit("{\"event\":\"error\",\"msg\":\"%s\"}", msg);
	exit(1);
}

const struct slot *slot_of(const struct config *c, uint64_t gpa)
{
	for (int i = 0; i < c->nslots; i++)
		if (gpa >= c->slots[i].gpa && gpa - c->slots[i].gpa < c->slots[i].size)
			return &c->slots[i];
	return NULL;
}

/* Pre-fault every page of a mapped slot and tag it with its own GPA. */
void tag_slot(struct vm *vm, const struct config *c, int i)
{
	const struct slot *s = &c->slots[i];

	for (uint64_t off = 0; off < s->size; off += PAGE_SIZE) {
		uint64_t tag = s->gpa + off;
		memcpy(vm->hva[i] + off + TAG_OFFSET, &tag, sizeof(tag));
	}
}

uint8_t *gpa_to_hva(const struct vm *vm, const struct config *c, uint64_t gpa, size_t len)
{
	const struct slot *s = slot_of(c, gpa);

	if (!s || gpa + len - s->gpa > s->size)
		return NULL;
	return vm->hva[s - c->slots] + (gpa - s->gpa);
}

void record_exit(struct vm *vm, const char *reason, uint64_t addr, int write)
{
	if (vm->nexits == MAX_EXITS) {
		vm->lost_exits++;
		return;
	}
	vm->exits[vm->nexits++] = (struct exit_rec){ reason, addr, write };
}
