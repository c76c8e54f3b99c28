/* tests/model_train/test_train_main.c — registers the suites of test_model_train. */
void register_ops_suite(void);
void register_model_suite(void);
void register_oracle_suite(void);
void register_cli_suite(void);
void register_lora_suite(void);
void register_lora_bf16_suite(void);
int register_suites(void);

int register_suites(void) {
    register_ops_suite();
    register_model_suite();
    register_oracle_suite();
    register_cli_suite();
    register_lora_suite();
    register_lora_bf16_suite();
    return 0;
}
