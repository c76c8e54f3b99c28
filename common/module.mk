LIB_SRCS += common/common.c common/wire.c
HEADERS  += common/common.h common/wire.h
TESTS    += test_common
SAN_TESTS += test_common
test_common_SRCS := tests/common/test_common.c
