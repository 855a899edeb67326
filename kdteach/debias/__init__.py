"""Early readouts and DeDiER (Tiwari et al., WACV 2024): find the examples an early layer gets confidently wrong,
and weight their distillation loss up; the baselines DeDiER is compared with; and diagnostics of the readout.

A readout is a small head trained on an early stage of the student. Early layers see simple cues (a background,
a colour) better than the object itself, so where such a cue contradicts the label, the readout tends to be wrong
and sure of it. DeDiER turns that into per-example weights for the distillation loss:

    margin_i = p_(1) - p_(2)          top-1 minus top-2 softmax probability of the readout (binary: |p0 - p1|)
    w_i      = exp(beta * margin_i ** alpha)   if the readout is wrong on example i
             = 1                                otherwise

alpha is an exponent on the margin (with the paper's small alpha, margin**alpha is close to 1 for most margins,
so the weight is close to a constant e^beta on readout errors); beta sets how large the upweight is.

One module per idea; every name is importable from kdteach.debias itself:
- dedier: the confidence margin, DeDiER's weights, the early readout and the per-epoch reweighting (implemented as
  the paper describes it, with switches that reproduce the official code's behaviour, for comparison);
- baselines: JTT's error set and weights, weighted cross entropy, the Group DRO loss, a SimKD-style student reading
  the teacher's frozen head;
- diagnostics: readout accuracy and margins per group, precision and recall of "readout wrong with margin >= m"
  for minority membership, the weights each group receives.
"""
from kdteach.debias.baselines import (
    GroupDROLoss,
    InstanceWeights,
    SimKDLogits,
    SimKDLoss,
    SimKDStudent,
    WeightedCrossEntropy,
    jtt_error_set,
    jtt_weights,
    teacher_features,
)
from kdteach.debias.dedier import (
    DeDiERReweighting,
    EarlyReadout,
    confidence_margin,
    dedier_weights,
    parameters_upto,
    student_left_as_is,
)
from kdteach.debias.diagnostics import (
    ReadoutDiagnosis,
    confident_error_retrieval,
    diagnose_readout,
    readout_by_group,
    weights_by_group,
)

__all__ = [
    "confidence_margin",
    "dedier_weights",
    "EarlyReadout",
    "DeDiERReweighting",
    "student_left_as_is",
    "parameters_upto",
    "jtt_error_set",
    "jtt_weights",
    "InstanceWeights",
    "WeightedCrossEntropy",
    "GroupDROLoss",
    "SimKDLogits",
    "SimKDStudent",
    "SimKDLoss",
    "teacher_features",
    "readout_by_group",
    "confident_error_retrieval",
    "weights_by_group",
    "ReadoutDiagnosis",
    "diagnose_readout",
]
