LIB_SRCS += common/common.c common/crc32.c common/opts.c
HEADERS  += common/common.h
TESTS    += test_common
SAN_TESTS += test_common
test_common_SRCS := tests/common/test_common.c
