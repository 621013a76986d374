"paddy_lib.training's edge cases and behaviour on the demo data, moved out of 02_training: names, precision, errors, work."
import warnings
import pytest, torch
from fastai.vision.all import Callback, Resize, MixedPrecision, find_bs, noop
from paddy_lib.data import PaddyError, make_demo_paddy
from paddy_lib.training import TIMM_RENAMES, timm_arch, precision_for, paddy_learner, train, StopAfter, check_weights, fit_recipe

TINY, ITEM = 'test_resnet', Resize(48, method='squish')

@pytest.fixture(scope='module')
def path(): return make_demo_paddy()

class StepItems(Callback):
    order = 98
    def __init__(self): self.sizes, self.n = [], 0
    def after_loss(self):
        if self.training: self.n += find_bs(self.yb)
    def after_step(self): self.sizes.append(self.n); self.n = 0

def test_timm_arch(capsys):
    assert timm_arch('convnext_small_in22k') == 'convnext_small.fb_in22k'
    assert 'convnext_small_in22k' in capsys.readouterr().out
    assert timm_arch('resnet18') == 'resnet18' and capsys.readouterr().out == ''
    assert timm_arch('vit_large_patch16_224', verbose=False) == TIMM_RENAMES['vit_large_patch16_224']
    with pytest.raises(PaddyError, match='Close matches: .*convnext_small_in22k'): timm_arch('convnext_smal_in22k')
    with pytest.raises(PaddyError, match='tags are'): timm_arch('resnet18.nope')
    assert timm_arch('swinv2_large_window12_192_22k', verbose=False) == 'swinv2_large_window12_192.ms_in22k'
    assert timm_arch('convnext_large_in22ft1k', verbose=False) == 'convnext_large.fb_in22k_ft_in1k'  # from timm's own map
    for today in ('convnext_small.fb_in22k', 'hf-hub:timm/resnet18.a1_in1k'):  # today's names and Hub names pass through
        assert timm_arch(today) == today and capsys.readouterr().out == ''

def test_precision_for():
    assert precision_for('cpu') == 'fp32' and precision_for('cpu', 'fp32') == 'fp32'
    with pytest.raises(PaddyError, match='needs a CUDA GPU'): precision_for('cpu', 'bf16')
    with pytest.raises(PaddyError, match='needs a CUDA GPU'): precision_for('cpu', 'fp16')
    with pytest.raises(PaddyError, match='use one of'): precision_for('cpu', 'half')

def test_paddy_learner_errors(path):
    with pytest.raises(PaddyError, match='does not divide'): paddy_learner(TINY, 32, item=ITEM, accum=3, path=path)
    with pytest.raises(PaddyError, match='positive int'): paddy_learner(TINY, 32, item=ITEM, accum=0, path=path)
    small = path/'train_images'/'bacterial_panicle_blight'
    with pytest.raises(PaddyError, match='no full batch'): paddy_learner(TINY, 32, item=ITEM, path=path, trn_path=small)
    with pytest.raises(PaddyError, match='positive int'): StopAfter(0)
    with pytest.raises(PaddyError, match='needs a CUDA GPU'): paddy_learner(TINY, 32, item=ITEM, path=path, precision='fp16')
    with pytest.raises(PaddyError, match='resnet18'): paddy_learner('resnet_18', 32, item=ITEM, path=path)

def test_paddy_learner_cpu(path):
    learn = paddy_learner(TINY, 32, item=ITEM, accum=4, path=path, seed=1, num_workers=0)
    assert learn.dls.bs == 16 and learn.grad_accum.eff_bs == 64 and learn.pretrained is False
    assert not any(isinstance(cb, MixedPrecision) for cb in learn.cbs)

def test_train_demo(path):
    "Road to the Top's return values, 64 items per step, no mixed-precision warnings on a CPU, and the work of each recipe:"
    "fine_tune(1) trains and validates twice and TTAs 5 passes over the test set (not logged); finetune=False once, no TTA."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn, (preds, targs) = train(TINY, 32, item=ITEM, accum=2, epochs=1, path=path, seed=0, num_workers=0,
                                      return_learner=True, cbs=[StepItems(), ft := CountItems()], finetune=True)
    assert not [w for w in caught if any(s in str(w.message) for s in ('autocast', 'GradScaler', 'amp'))]
    assert preds.shape == (40, 10) and targs is None
    assert torch.allclose(preds.sum(1), torch.ones(40), atol=1e-5)
    assert learn.step_items.sizes == [64, 64, 64, 32]*2  # fine_tune's two fits: 7 batches of 32 each, the last flushed
    n_trn, n_val = len(learn.dls.train)*learn.dls.train.bs, len(learn.dls.valid_ds)
    assert ft.n == dict(train=2*n_trn, eval=2*n_val + 5*40)
    assert ft.logs == [True, True, False]   # TTA doesn't log: no header-only progress table
    learn, res = train(TINY, 32, item=ITEM, accum=2, epochs=1, path=path, seed=0, num_workers=0, finetune=False,
                       return_learner=True, cbs=(one := CountItems()))
    assert res is None and one.n == dict(train=n_trn, eval=n_val) and one.logs == [True]

def test_train_n_batches_finetune(path):
    "`n_batches` stops training, not the TTA that `fine_tune` is followed by (fastai's `tta` runs `before_fit`)."
    learn, (preds, targs) = train(TINY, 32, item=ITEM, accum=2, epochs=1, path=path, seed=0, num_workers=0,
                                  n_batches=2, return_learner=True, cbs=StepItems(), finetune=True)
    assert learn.stop_after.count == 2 and learn.step_items.sizes == [64]
    assert preds.shape == (40, 10) and targs is None

@pytest.mark.parametrize('cap,want', [((6, 0), 'fp16'), ((7, 5), 'fp16'), ((8, 0), 'bf16'), ((9, 0), 'bf16')])
def test_precision_for_capability(monkeypatch, cap, want):
    "bf16 from the training device's compute capability (8.0+), not `is_bf16_supported` (emulation, current GPU)."
    asked = []
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: asked.append(device) or cap)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)  # what a T4 answers: must not matter
    assert precision_for('cuda:1') == want and asked[-1] == torch.device('cuda:1')
    if want == 'fp16':
        with pytest.raises(PaddyError, match=f'has {cap[0]}.{cap[1]}'): precision_for('cuda:1', 'bf16')
    else: assert precision_for('cuda:1', 'bf16') == 'bf16'

def test_pretrained_follows_data(path, tmp_path, monkeypatch):
    "`pretrained=None`: random weights on the demo data, pretrained on any other, from `path` or from `dls.path`."
    import shutil, paddy_lib.training as tr
    from paddy_lib.data import paddy_dls
    real = shutil.copytree(path, tmp_path/'paddy', ignore=shutil.ignore_patterns('.paddy_demo.json'))  # no demo stamp
    asked, build = [], tr.vision_learner
    monkeypatch.setattr(tr, 'vision_learner', lambda *a, pretrained, **k: asked.append(pretrained) or build(*a, pretrained=False, **k))
    monkeypatch.setattr(tr, 'check_weights', lambda arch: 'cache')  # offline here: the weights are "cached"
    monkeypatch.setenv('PADDY_SCALE', 'full')  # the machine's scale doesn't decide
    for kw in [dict(path=path), dict(path=real), dict(dls=paddy_dls(path, 32, item=ITEM, bs=64, num_workers=0)),
               dict(dls=paddy_dls(real, 32, item=ITEM, bs=64, num_workers=0)),
               dict(dls=paddy_dls(real, 32, item=ITEM, bs=8, num_workers=0, trn_path=real/'train_images'/'normal'), eff_bs=8),
               dict(path=path, pretrained=True), dict(path=real, pretrained=False)]:
        paddy_learner(TINY, 32, item=ITEM, num_workers=0, **kw)
    assert asked == [False, True, False, True, True, True, False]

def test_paddy_learner_accum_agrees(path):
    "`accum` is never silently ignored: with `bs` or `dls`, `bs*accum` must be `eff_bs`."
    from paddy_lib.data import paddy_dls
    dls = paddy_dls(path, 32, item=ITEM, bs=32, num_workers=0)
    assert paddy_learner(TINY, 32, item=ITEM, accum=2, dls=dls).grad_accum.eff_bs == 64
    assert paddy_learner(TINY, 32, item=ITEM, accum=1, dls=dls, eff_bs=32).grad_accum.eff_bs == 32  # as memory.measure
    assert paddy_learner(TINY, 32, item=ITEM, accum=4, path=path, bs=16, num_workers=0).dls.bs == 16
    with pytest.raises(PaddyError, match='32 × accum=4 = 128 items.*would be ignored'): paddy_learner(TINY, 32, item=ITEM, accum=4, dls=dls)
    with pytest.raises(PaddyError, match='would be ignored'): paddy_learner(TINY, 32, item=ITEM, accum=2, bs=16, path=path)
    with pytest.raises(PaddyError, match='one or the other'): paddy_learner(TINY, 32, item=ITEM, accum=2, bs=16, dls=dls)

class Fits(Callback):
    "Record, as each training epoch starts, whether the whole model trains (every parameter requires grad)."
    def __init__(self): self.fits = []
    def before_train(self): self.fits.append(all(p.requires_grad for p in self.learn.model.parameters()))

def test_recipe_follows_the_weights(path, capsys):
    "finetune=None: fit_one_cycle on the whole model from random weights (said once), with TTA; True/False as the seed."
    learn, (preds, _) = train(TINY, 32, item=ITEM, accum=2, epochs=1, path=path, seed=0, num_workers=0, n_batches=1,
                              return_learner=True, cbs=(f := Fits()))
    assert capsys.readouterr().out.count('train: fit_one_cycle on the whole model (random weights') == 1
    assert preds.shape == (40, 10) and f.fits == [True]  # one fit, of the whole model
    learn = paddy_learner(TINY, 32, item=ITEM, accum=2, path=path, seed=0, num_workers=0, cbs=[StopAfter(1), f2 := Fits()])
    learn.pretrained = True  # as vision_learner records it for pretrained weights
    assert fit_recipe(learn, 1) == 'fine_tune' and f2.fits == [False, True]  # frozen body first, then everything
    assert train(TINY, 32, item=ITEM, accum=2, epochs=1, path=path, finetune=False, n_batches=1, num_workers=0) is None
    assert 'train:' not in capsys.readouterr().out  # the seed's explicit choice: nothing to say

def test_check_weights(monkeypatch, tmp_path):
    "No internet and no cache: one PaddyError naming --no-pretrained, at once; a cached file or an untrained arch said so."
    import huggingface_hub as hf
    monkeypatch.setattr(hf.constants, 'HF_HUB_CACHE', str(tmp_path))
    monkeypatch.setattr(hf.constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens there: unreachable
    with pytest.raises(PaddyError, match=r"not in the cache .* can't be reached .*--no-pretrained"): check_weights('resnet18')
    monkeypatch.setattr(hf.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(PaddyError, match='HF_HUB_OFFLINE|--no-pretrained'): check_weights('convnext_small_in22k')
    with pytest.raises(PaddyError, match='no pretrained weights'): check_weights('botnet50ts_256')  # timm has none
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path/'torch'))  # weights only at a URL: torch.hub's cache
    with pytest.raises(PaddyError, match=r"legacy_seresnet18.in1k's pretrained weights \(https://"): check_weights('legacy_seresnet18.in1k')
    (tmp_path/'torch'/'checkpoints').mkdir(parents=True)
    from timm.models import get_pretrained_cfg
    (tmp_path/'torch'/'checkpoints'/get_pretrained_cfg('legacy_seresnet18.in1k').url.split('/')[-1]).write_bytes(b'')
    assert check_weights('legacy_seresnet18.in1k') == 'cache'
    repo = tmp_path/'models--timm--resnet18.a1_in1k'
    (repo/'refs').mkdir(parents=True); (repo/'refs'/'main').write_text('abc')
    (repo/'snapshots'/'abc').mkdir(parents=True); (repo/'snapshots'/'abc'/'model.safetensors').write_bytes(b'')
    assert check_weights('resnet18') == 'cache'

def test_paddy_learner_checks_weights_before_building(path, tmp_path, monkeypatch):
    "pretrained=True offline: the clear error, before vision_learner (which would retry the hub for most of a minute)."
    import paddy_lib.training as tr
    built = []
    monkeypatch.setattr(tr, 'vision_learner', lambda *a, **k: built.append(1))
    monkeypatch.setattr(tr, 'check_weights', lambda arch: (_ for _ in ()).throw(PaddyError(f'{arch}: --no-pretrained')))
    with pytest.raises(PaddyError, match='--no-pretrained'): paddy_learner('resnet18', 32, item=ITEM, path=path, pretrained=True)
    assert built == []

def test_stop_after_stops_training_not_prediction(path):
    "`StopAfter` counts across fine_tune's fits, and a later `tta` still predicts every image while `fit` trains nothing."
    from paddy_lib.data import paddy_dls
    from fastai.vision.all import vision_learner
    dls = paddy_dls(path, 32, item=ITEM, bs=32, seed=42, num_workers=0)
    learn = vision_learner(dls, TINY, pretrained=False, cbs=[StopAfter(3), StepItems()])
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1)
        assert (learn.stop_after.count, learn.step_items.sizes) == (3, [32, 32, 32])
        preds, _ = learn.tta()
        learn.fit(1)
    assert preds.shape == (len(dls.valid_ds), dls.c) and learn.step_items.sizes == [32, 32, 32]

class CountItems(Callback):
    "Images through the model, in training and in evaluation (validation and TTA), and whether each `before_fit` logs."
    def __init__(self): self.n, self.logs = dict(train=0, eval=0), []
    def before_fit(self): self.logs.append(self.learn.logger is not noop)
    def after_pred(self): self.n['train' if self.training else 'eval'] += find_bs(self.xb)

def test_memory_probe_on_one_label(path):
    "One label's folder, eff_bs=8 and n_batches=2: one optimizer step of 8 items, a one-class head."
    from paddy_lib.data import smallest_label
    small = path/'train_images'/smallest_label(path)
    learn, _ = train(TINY, 32, item=ITEM, accum=2, finetune=False, epochs=1, path=path, trn_path=small, eff_bs=8,
                     n_batches=2, return_learner=True, num_workers=0, cbs=StepItems())
    assert learn.step_items.sizes == [8] and learn.dls.c == 1

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

@cuda
def test_paddy_learner_on_a_gpu(path):
    learn = paddy_learner(TINY, 32, item=ITEM, accum=2, path=path, num_workers=0)
    mp = [cb for cb in learn.cbs if isinstance(cb, MixedPrecision)]
    assert learn.dls.device.type == 'cuda' and len(mp) == 1
    assert mp[0].amp_mode.value == ('bf16' if torch.cuda.get_device_capability()[0] >= 8 else 'fp16')
    assert precision_for('cuda', 'fp16') == 'fp16'
