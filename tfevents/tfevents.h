/* tfevents/tfevents.h — TensorBoard event files: scalars of a run in the file format `tensorboard
 * --logdir` reads, written beside metrics.jsonl.
 *
 * A file is a sequence of TFRecords, each
 *     uint64 length (little endian) | uint32 masked CRC-32C of those 8 bytes | data | uint32 masked CRC-32C of data
 * (mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8), whose data is an `Event` protocol buffer:
 *     Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
 *               SessionLog session_log = 7; }
 *     Summary { repeated Value value = 1; }    Value { string tag = 1; float simple_value = 2; }
 *     SessionLog { SessionStatus status = 1; }   (START = 1)
 * The first record of a file is the event with file_version "brain.Event:2"; every later one carries
 * one step's scalars. Encoded by hand here (varints, fixed64 / fixed32 little endian).
 *
 * Each step's records are appended with one write and fsync'd: a crash leaves a prefix of whole
 * records, at worst followed by one torn record, which TensorBoard's reader stops at. A file is never
 * reopened: every writer (a process start, a resume) creates a new one, which TensorBoard merges. */
#ifndef RLHF_TFEVENTS_H
#define RLHF_TFEVENTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* The version string of the first event of every file. */
#define TFEVENTS_FILE_VERSION "brain.Event:2"

typedef struct tfevents_writer tfevents_writer;

/* Creates DIR/events.out.tfevents.<unix seconds>.<host>.<pid> (never an existing file) and writes the
 * file_version event. 0, or a negative RLHF_E* code with err filled. */
int tfevents_writer_create(tfevents_writer **out, const char *dir, rlhf_error *err);
/* Closes the file; *w becomes NULL. NULL is fine. */
void tfevents_writer_destroy(tfevents_writer **w);
/* The file's path. */
const char *tfevents_writer_path(const tfevents_writer *w);

/* One event at `step` and `wall_time` (seconds since the epoch) with the scalars tags[i] = values[i].
 * Appended, fsync'd; on a failed write the file goes back to its last whole record. */
int tfevents_writer_scalars(tfevents_writer *w, int64_t step, double wall_time, const char *const *tags,
                            const float *values, size_t n, rlhf_error *err);

/* A SessionLog START event at `step`: TensorBoard drops the events of every step >= step it read
 * before it (from this file or older ones): what a run resumed from a checkpoint at step - 1 writes
 * first, so the steps a crash made it train twice are shown once, as trained the second time. */
int tfevents_writer_restart(tfevents_writer *w, int64_t step, double wall_time, rlhf_error *err);

/* A metrics.jsonl record as one event: every number in the flat object `rec` except "step" becomes a
 * scalar of the event at rec's "step", its key the tag; booleans, strings and nested values are left
 * out, and so are the keys starting with skip_prefix (NULL: none; the updater skips "eval/", whose
 * scalars the evaluation writes itself at the step of the checkpoint it scored). */
int tfevents_writer_metrics(tfevents_writer *w, const json_t *rec, double wall_time, const char *skip_prefix,
                            rlhf_error *err);

/* --- the encoding, for tests and other writers --- */

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit. Chain with crc = tfevents_crc32c(crc,
 * ...), start 0. tfevents_crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t tfevents_crc32c(uint32_t crc, const void *data, size_t n);
/* The TFRecord mask of a CRC. */
uint32_t tfevents_masked_crc(uint32_t crc);
/* The whole record (header, data, footer) of `data` into out (n + 16 bytes). Returns n + 16. */
size_t tfevents_frame(uint8_t *out, const uint8_t *data, size_t n);

#endif
