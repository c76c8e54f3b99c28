/* updater/updater_int.h — updater/ internals shared by its .c files (not installed). */
#ifndef RLHF_UPDATER_UPDATER_INT_H
#define RLHF_UPDATER_UPDATER_INT_H

#include <pthread.h>

#include "rewards/rewards.h"
#include "updater/updater.h"

/* A blocking FIFO of scored_group (mutex + condition variable). */
typedef struct group_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    scored_group *head, *tail;
    int n;
    int closed;
} group_queue;
void updater_group_queue_init(group_queue *q);
void updater_group_queue_fini(group_queue *q);
void updater_group_queue_push(group_queue *q, scored_group *s);
/* Pops one; waits up to timeout_s (0 = don't wait). NULL when empty (or closed and empty). */
scored_group *updater_group_queue_pop(group_queue *q, double timeout_s);
int updater_group_queue_len(group_queue *q);
void updater_group_queue_close(group_queue *q);

#endif
