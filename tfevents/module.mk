# tfevents/: TensorBoard event files (TFRecord framing, masked CRC-32C, hand-encoded Event protobufs).
# Public header: tfevents/tfevents.h. Used by updater/ to write the scalars of metrics.jsonl beside it.
# Tested by tests/tfevents (an independent Python reader: tests/oracle/tfevents_check.py).
LIB_SRCS += tfevents/tfevents.c
HEADERS  += tfevents/tfevents.h
TESTS    += test_tfevents
SAN_TESTS += test_tfevents
test_tfevents_SRCS := tests/tfevents/test_tfevents.c
