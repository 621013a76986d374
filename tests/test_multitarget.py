"Multi-target behaviour a notebook can't show: a learner exported here and loaded in a fresh process, and properties of the loss."
import json, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import torch, torch.nn.functional as F
from fastai.vision.all import Resize, set_seed, error_rate

from paddy_lib.data import make_demo_paddy, get_test_files, LABELS, VARIETIES, PaddyError
from paddy_lib.multitarget import (MultiTarget, HeadSizeError, TargetCountError, multitarget_dls, multitarget_learner,
                                   predict_targets, disease_loss, variety_loss, combine_loss, disease_err, variety_err)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_paddy(tmp_path_factory.mktemp('mt')/'paddy', n_train=80, n_test=6)


def small_dls(path, **kw):
    return multitarget_dls(path, size=32, item=Resize(48, method='squish'), bs=16, seed=0, num_workers=0, **kw)


def test_exported_learner_predicts_in_a_fresh_process(demo, tmp_path):
    "`export` pickles the `MultiTarget` inside the loss by reference to paddy_lib: a new process decodes both targets."
    set_seed(0)
    learn = multitarget_learner(small_dls(demo), 'resnet18', pretrained=False)
    files = get_test_files(demo)
    here = predict_targets(learn, files)
    learn.export(tmp_path/'mt.pkl')
    code = (f"from fastai.learner import load_learner\nfrom paddy_lib.multitarget import predict_targets\n"
            f"from paddy_lib.data import get_test_files\n"
            f"learn = load_learner({str(tmp_path/'mt.pkl')!r})\n"
            f"print(predict_targets(learn, get_test_files({str(demo)!r})).to_json(orient='records'))")
    r = subprocess.run([sys.executable, '-W', 'ignore', '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    there = pd.DataFrame(json.loads(r.stdout.strip().splitlines()[-1]))
    assert list(there.columns) == ['image_id', 'disease', 'disease_prob', 'variety', 'variety_prob']
    assert there.disease.tolist() == here.disease.tolist() and there.variety.tolist() == here.variety.tolist()
    assert there.disease_prob.values == pytest.approx(here.disease_prob.values, abs=1e-5)


def test_seed_functions_match_the_course():
    "The module's seed-named functions are the course's formulas, on a 20-output and (disease only) a 10-output model."
    torch.manual_seed(0)
    out, d, v = torch.randn(16, 20), torch.randint(0, 10, (16,)), torch.randint(0, 10, (16,))
    assert disease_loss(out, d, v) == pytest.approx(F.cross_entropy(out[:, :10], d).item())
    assert variety_loss(out, d, v) == pytest.approx(F.cross_entropy(out[:, 10:], v).item())
    assert combine_loss(out, d, v) == pytest.approx((F.cross_entropy(out[:, :10], d) + F.cross_entropy(out[:, 10:], v)).item())
    assert disease_err(out, d, v) == pytest.approx(error_rate(out[:, :10], d).item())
    assert variety_err(out, d, v) == pytest.approx(error_rate(out[:, 10:], v).item())
    assert disease_loss(out[:, :10], d, v) == pytest.approx(F.cross_entropy(out[:, :10], d).item())
    with pytest.raises(HeadSizeError, match='n_out=20'): variety_loss(out[:, :10], d, v)


def test_zero_weight_target_gets_no_gradient(demo):
    "A target with weight 0 is out of the loss: its head rows get exactly zero gradient, the others don't."
    set_seed(0)
    learn = multitarget_learner(small_dls(demo), 'resnet18', pretrained=False, weights=[1, 0])
    x, d, v = [o.as_subclass(torch.Tensor) for o in learn.dls.one_batch()]
    learn.model.train()
    learn.loss_func(learn.model(x), d, v).backward()
    g = learn.model[-1][-1].weight.grad
    assert g[10:].abs().sum() == 0 and g[:10].abs().sum() > 0


def test_per_item_losses(demo):
    "fastai's `with_loss` (reduction='none') gives each item's weighted sum of its targets' cross-entropies."
    set_seed(0)
    learn = multitarget_learner(small_dls(demo), 'resnet18', pretrained=False, weights=[1, 0.5])
    raw, (d, v), losses = learn.get_preds(act=lambda o: o, with_loss=True)
    want = F.cross_entropy(raw[:, :10], d, reduction='none') + 0.5*F.cross_entropy(raw[:, 10:], v, reduction='none')
    assert losses.shape == (len(learn.dls.valid_ds),)
    assert torch.allclose(losses, want, atol=1e-5)
    assert learn.loss_func.reduction == 'mean'  # restored after get_preds


def test_paddy_vocabularies_fixed_on_a_subset(demo):
    "Trained on one label's folder, the Paddy targets keep the competition's 10+10 classes, so the head and order don't change."
    dls = small_dls(demo, trn_path=demo/'train_images'/'blast', valid_pct=0.25)
    mt = MultiTarget.from_dls(dls)
    assert mt.vocabs == [list(LABELS), list(VARIETIES)] and mt.n_out == 20


def test_errors_are_paddy_errors(demo):
    with pytest.raises(TargetCountError, match='3 target blocks for 2 getters'):
        small_dls(demo, blocks=[None]*3)
    with pytest.raises(PaddyError, match='n_out=12, but the targets need 20'):
        multitarget_learner(small_dls(demo), 'resnet18', pretrained=False, n_out=12)
    with pytest.raises(PaddyError, match='No items'):
        predict_targets(multitarget_learner(small_dls(demo), 'resnet18', pretrained=False), [])


@pytest.mark.parametrize('scale', ['demo', 'full'])
def test_pretrained_none_follows_the_dataset_not_the_machine(demo, tmp_path, monkeypatch, scale):
    "`pretrained=None`: random weights on demo-stamped data, pretrained on any other, whatever `paddy_scale()` says."
    import shutil
    import paddy_lib.multitarget as pm
    monkeypatch.setenv('PADDY_SCALE', scale)
    real = Path(shutil.copytree(demo, tmp_path/'real'))
    (real/'.paddy_demo.json').unlink()
    class Recorded(Exception): pass
    def chosen(dls):
        seen = {}
        def fake(*a, **k): seen.update(k); raise Recorded
        monkeypatch.setattr(pm, 'vision_learner', fake)
        with pytest.raises(Recorded): multitarget_learner(dls, 'resnet18')
        return seen['pretrained']
    assert (chosen(small_dls(demo)), chosen(small_dls(real))) == (False, True)
    assert pm.dls_dataset(small_dls(real)) == real
