/* model/kernels.c — the reference kernels of the sampler (plain loops, the oracle the vector tables are
 * tested against and the table a CPU without AVX2 runs) and the run-time choice of a table. */
#include "model/kernels_int.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void ref_panel(float *out, const float *x, int ld_in, const float *wp, int nr, int IC, int OC, int o0,
                      int accumulate) {
    for (int r = 0; r < nr; r++)
        for (int j = 0; j < KERNEL_PANEL && o0 + j < OC; j++) {
            float acc = 0.0f;
            for (int i = 0; i < IC; i++) acc += x[(size_t)r * ld_in + i] * wp[(size_t)i * KERNEL_PANEL + j];
            float *y = out + (size_t)r * OC + o0 + j;
            *y = accumulate ? *y + acc : acc;
        }
}

static void ref_panel_bf16(float *out, const float *x, int ld_in, const uint16_t *wp, int nr, int IC, int OC,
                           int o0, int accumulate) {
    for (int r = 0; r < nr; r++)
        for (int j = 0; j < KERNEL_PANEL && o0 + j < OC; j++) {
            float acc = 0.0f;
            for (int i = 0; i < IC; i++)
                acc += x[(size_t)r * ld_in + i] * model_bf16_to_f32(wp[(size_t)i * KERNEL_PANEL + j]);
            float *y = out + (size_t)r * OC + o0 + j;
            *y = accumulate ? *y + acc : acc;
        }
}

static float ref_max_value(const float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

static double ref_exp_shifted(float *e, const float *x, int n, float shift, float scale) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        float t = (x[i] - shift) * scale;
        e[i] = expf(t < -87.0f ? -87.0f : t);
        sum += e[i];
    }
    return sum;
}

static float ref_sum16(const float *x) {
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += x[j];
    return s;
}

static void ref_attend_head(float *o, const float *q, const float *kT, const float *v, int ldv, int start, int n,
                            int D, int T, float *sc) {
    float mx = -INFINITY;
    for (int t = 0; t < n; t++) {
        int c = start + t < T ? start + t : start + t - T; /* cache index of the t-th position */
        float d = 0.0f;
        for (int i = 0; i < D; i++) d += q[i] * kT[(size_t)i * T + c];
        sc[t] = d;
        mx = d > mx ? d : mx;
    }
    double sum = 0.0;
    for (int t = 0; t < n; t++) sum += (sc[t] = expf(sc[t] - mx));
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < D; i++) o[i] = 0.0f;
    for (int t = 0; t < n; t++) {
        int c = start + t < T ? start + t : start + t - T;
        for (int i = 0; i < D; i++) o[i] += sc[t] * v[(size_t)c * ldv + i];
    }
    for (int i = 0; i < D; i++) o[i] *= inv;
}

static void ref_rmsnorm(float *y, const float *x, const float *w, int C, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < C; i++) ss += x[i] * x[i];
    float s = 1.0f / sqrtf(ss / (float)C + eps);
    for (int i = 0; i < C; i++) y[i] = x[i] * s * w[i];
}

static void ref_rope(float *v, const float *c, const float *s, int NH, int D) {
    int half = D / 2;
    for (int h = 0; h < NH; h++, v += D)
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i] + a * s[i];
        }
}

static void ref_swiglu(float *g, const float *u, int F) {
    for (int i = 0; i < F; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const model_kernels model_kernels_ref = {
    .name = "ref",
    .panel_rows = 1,
    .panel = ref_panel,
    .panel_bf16 = ref_panel_bf16,
    .attend_head = ref_attend_head,
    .exp_shifted = ref_exp_shifted,
    .max_value = ref_max_value,
    .sum16 = ref_sum16,
    .rmsnorm = ref_rmsnorm,
    .rope = ref_rope,
    .swiglu = ref_swiglu,
};

/* ---------------------------------------------------------------- choice */

int model_isa_supported(model_isa isa) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    switch (isa) {
    case MODEL_ISA_REF: return 1;
    case MODEL_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case MODEL_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma");
    }
    return 0;
#else
    return isa == MODEL_ISA_REF;
#endif
}

const model_kernels *model_kernels_of(model_isa isa) {
    switch (isa) {
    case MODEL_ISA_AVX2: return &model_kernels_avx2;
    case MODEL_ISA_AVX512: return &model_kernels_avx512;
    default: return &model_kernels_ref;
    }
}

int model_kernels_select(const model_kernels **out, rlhf_error *err) {
    const char *want = getenv("RLHF_ISA");
    if (want && *want) {
        for (int i = 0; i < 3; i++) {
            if (strcmp(want, model_kernels_of((model_isa)i)->name) != 0) continue;
            if (!model_isa_supported((model_isa)i))
                return rlhf_error_set(err, RLHF_EINVAL, "RLHF_ISA",
                                      "'%s' kernels need CPU features this machine lacks (it runs: %s)", want,
                                      model_isa_supported(MODEL_ISA_AVX2) ? "ref, avx2" : "ref");
            *out = model_kernels_of((model_isa)i);
            return 0;
        }
        return rlhf_error_set(err, RLHF_EINVAL, "RLHF_ISA", "unknown instruction set '%s' (ref, avx2 or avx512)",
                              want);
    }
    *out = model_isa_supported(MODEL_ISA_AVX512) ? &model_kernels_avx512
           : model_isa_supported(MODEL_ISA_AVX2) ? &model_kernels_avx2
                                                 : &model_kernels_ref;
    return 0;
}

/* "avx512 (this CPU runs ref avx2 avx512; CPU: <model name>)" */
int model_kernels_describe(char *buf, size_t n, rlhf_error *err) {
    const model_kernels *k;
    int rc = model_kernels_select(&k, err);
    if (rc) return rc;
    char cpu[128] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) != 0) continue;
            const char *p = strchr(line, ':');
            if (!p) break;
            for (p++; *p == ' ' || *p == '\t'; p++) {}
            snprintf(cpu, sizeof cpu, "%.*s", (int)strcspn(p, "\n"), p);
            break;
        }
        fclose(f);
    }
    char runs[32] = "";
    for (int i = 0; i < 3; i++)
        if (model_isa_supported((model_isa)i))
            snprintf(runs + strlen(runs), sizeof runs - strlen(runs), "%s%s", *runs ? " " : "", model_kernels_of((model_isa)i)->name);
    const char *forced = getenv("RLHF_ISA");
    snprintf(buf, n, "%s%s (this CPU runs: %s; CPU: %s)", k->name, forced && *forced ? ", forced by RLHF_ISA" : "",
             runs, cpu);
    return 0;
}
