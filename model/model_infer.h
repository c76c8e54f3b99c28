/* model/model_infer.h — inference half of model/'s public API (included by model/model.h). */
#ifndef RLHF_MODEL_INFER_H
#define RLHF_MODEL_INFER_H
#endif
