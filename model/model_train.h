/* model/model_train.h — training half of model/'s public API (included by model/model.h). */
#ifndef RLHF_MODEL_TRAIN_H
#define RLHF_MODEL_TRAIN_H
#endif
