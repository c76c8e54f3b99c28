/* tests/broker/test_elastic.c — generators come and go (issue 18, "elastic generators"): a generator
 * that leaves or dies holding prompts takes none with them. Registered in the "broker" suite by
 * tests/broker/test_broker_proc.c. */
#include <CUnit/CUnit.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "broker/broker.h"
#include "tests/broker/broker_proc_test.h"
#include "tests/test_proc.h"

/* g-gone leases 3 prompts and goes silent (its process closes the connection without answering); once the
 * broker's heartbeat timeout declares it dead, those 3 prompts are the next ones served, to g-next, before
 * any new prompt of the selector; counted as prompts/released and prompts/reissued. */
void test_elastic_reissue(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "elastic", "\"queue_capacity\": 16"), 0);
    broker_client *gone, *next;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gone, r.endpoint, WIRE_ROLE_GENERATOR, "g-gone", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&next, r.endpoint, WIRE_ROLE_GENERATOR, "g-next", r.cred, 3000, &e), 0);
    wire_prompt_batch held, got;
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gone, 3, &held, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(held.n, 3);
    broker_client_close(&gone); /* no more heartbeats: dead after heartbeat_timeout_ms (800) */
    json_t *st = NULL;
    long released = 0;
    for (int i = 0; i < 100 && released < 3; i++) {
        sleep_ms(50);
        json_decref(st);
        st = get_stats(&r);
        released = st ? stat_i(st, "prompts/released") : 0;
    }
    CU_ASSERT_EQUAL(released, 3);
    CU_ASSERT_EQUAL(stat_i(st, "prompts/reissued"), 0);
    json_decref(st);
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(next, 3, &got, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(got.n, 3);
    for (int i = 0; i < 3; i++) CU_ASSERT_STRING_EQUAL(got.prompts[i].id, held.prompts[i].id);
    wire_prompt_batch_free(&got);
    /* then the selector's own again */
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(next, 2, &got, 3000, &e), 0);
    CU_ASSERT_EQUAL(got.n, 2);
    wire_prompt_batch_free(&got);
    st = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(st, "prompts/reissued"), 3);
    CU_ASSERT_EQUAL(stat_i(st, "prompts/served"), 8);
    json_t *p = peer_of(st, "g-next");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(p, "outstanding")), 5);
    json_decref(st);
    wire_prompt_batch_free(&held);
    broker_client_close(&next);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
}
