/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The image registry: names of open images, their paths and home workers.
 * Main thread only. */
#include <stdlib.h>
#include <string.h>

#include "service.h"

struct svc_image *registry_find(struct svc *svc, const char *name)
{
	for (struct svc_image *si = svc->images; si; si = si->next)
		if (!strcmp(si->name, name))
			return si;
	return NULL;
}

struct svc_image *registry_find_real(struct svc *svc, const char *real)
{
	for (struct svc_image *si = svc->images; si; si = si->next)
		if (!strcmp(si->real, real))
			return si;
	return NULL;
}

struct svc_image *registry_add(struct svc *svc, const char *name,
			       const char *path, const char *real)
{
	struct svc_image *si = calloc(1, sizeof(*si));
	struct svc_image **pp = &svc->images;

	if (!si)
		return NULL;
	si->name = strdup(name);
	si->path = strdup(path);
	si->real = strdup(real);
	if (!si->name || !si->path || !si->real) {
		free(si->name);
		free(si->path);
		free(si->real);
		free(si);
		return NULL;
	}
	si->state = IMG_OPENING;
	/* appended: image.list shows images in the order they were opened */
	while (*pp)
		pp = &(*pp)->next;
	*pp = si;
	svc->nimages++;
	return si;
}

static void image_free(struct svc_image *si)
{
	free(si->name);
	free(si->path);
	free(si->real);
	json_decref(si->params);
	free(si);
}

void registry_remove(struct svc *svc, struct svc_image *si)
{
	struct svc_image **pp = &svc->images;

	while (*pp && *pp != si)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = si->next;
		svc->nimages--;
	}
	si->unlinked = true;
	if (!si->pins)
		image_free(si);
}

void registry_release(struct svc_image *si)
{
	if (si->unlinked && !si->pins)
		image_free(si);
}
