"""LLM.int8() on stories3M: perplexity at threshold 6.0 and inf, and the outlier-feature fraction per layer (docs/methods.md)."""
import copy, math, logging, torch, onebit
from onebit.methods.llm_int8 import LLMInt8Config
from onebit.registry import get_handler
from onebit.calibration import teacher_samples
from onebit.eval.data import load_text
from onebit.eval.perplexity import tokenize_text, perplexity
from onebit.models import load_model, load_tokenizer
p="../shared/models/stories3M"
model=load_model(p); tok=load_tokenizer(p)
calib=teacher_samples(model, 16, 256, seed=0)
ids=tokenize_text(tok, load_text("tinystories"))
pp=lambda m: perplexity(m, ids, 512, max_windows=20, progress=False).ppl
print("fp", pp(model))
for th in (6.0, math.inf):
    cfg=LLMInt8Config(threshold=th)
    m=copy.deepcopy(model)
    from onebit.api import find_linears
    h=get_handler(cfg); t=find_linears(m, cfg.skip)
    for n,new in h.quantize_model(m, t, progress=False, calib_ids=calib).items():
        from onebit.surgery import set_submodule; set_submodule(m,n,new)
    fr=h.outlier_fraction
    tot=sum(cfg.outliers.values())/sum(l.in_features for _,l in t)
    print("threshold", th, "ppl", pp(m), "outlier features overall %.2f%%" % (100*tot))
    for n,f in fr.items():
        if f: print("  %s %.1f%%" % (n.replace("model.layers.",""), 100*f))
