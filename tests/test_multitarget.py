"Multi-target behaviour the lesson doesn't show: edge cases, error wording, a learner loaded in a fresh process."
import json, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import torch, torch.nn.functional as F
from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, MixedPrecision, MultiCategoryBlock, RandomSplitter,
                               RegressionBlock, Resize, aug_transforms, error_rate, get_image_files, parent_label,
                               set_seed, vision_learner)

from paddy_lib.data import PaddyError, LABELS, VARIETIES, get_test_files, get_variety, make_demo_paddy, paddy_dls
import paddy_lib.multitarget as pm
from paddy_lib.multitarget import (MultiTarget, multitarget_dls, multitarget_learner, multitarget_submission,
                                   predict_targets, disease_loss, variety_loss, combine_loss, disease_err, variety_err)

COURSE = [disease_err, variety_err, disease_loss, variety_loss]  # the course's `all_metrics`


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_paddy(tmp_path_factory.mktemp('mt')/'paddy', n_train=80, n_test=6)


def small_dls(path, **kw):
    return multitarget_dls(path, size=32, item=Resize(48, method='squish'), bs=16, seed=0, num_workers=0, **kw)


@pytest.fixture(scope='module')
def learn(demo):
    set_seed(0)
    return multitarget_learner(small_dls(demo), 'resnet18', pretrained=False)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(16, 20), torch.randint(0, 10, (16,)), torch.randint(0, 10, (16,))


def test_course_functions_are_the_course_formulas(batch):
    "The course's functions on a 20-output model, and `disease_*` on the 10-output disease-only model."
    out, d, v = batch
    assert disease_loss(out, d, v) == pytest.approx(F.cross_entropy(out[:, :10], d).item())
    assert variety_loss(out, d, v) == pytest.approx(F.cross_entropy(out[:, 10:], v).item())
    assert combine_loss(out, d, v) == pytest.approx((F.cross_entropy(out[:, :10], d) + F.cross_entropy(out[:, 10:], v)).item())
    assert disease_err(out, d, v) == pytest.approx(error_rate(out[:, :10], d).item())
    assert variety_err(out, d, v) == pytest.approx(error_rate(out[:, 10:], v).item())
    assert disease_loss(out[:, :10], d, v) == pytest.approx(F.cross_entropy(out[:, :10], d).item())
    assert disease_err(out[:, :10], d, v) == pytest.approx(error_rate(out[:, :10], d).item())
    with pytest.raises(IndexError): variety_loss(out[:, :10], d, v)  # no variety columns: fails on the first batch


def test_multitarget_is_the_course_loss(batch):
    "Slices, metric names and values, weights, the per-target softmax and decoding, for Paddy's two targets."
    out, d, v = batch
    mt = MultiTarget([LABELS, VARIETIES], names=['disease', 'variety'])
    assert (mt.n_out, mt.sizes, mt.slices) == (20, [10, 10], [slice(0, 10), slice(10, 20)])
    assert [f.__name__ for f in mt.metrics] == ['disease_err', 'variety_err', 'disease_loss', 'variety_loss']
    for f, g in zip(mt.metrics, COURSE): assert f(out, d, v) == pytest.approx(g(out, d, v).item())
    assert mt(out, d, v) == pytest.approx(combine_loss(out, d, v).item())
    half = F.cross_entropy(out[:, :10], d) + 0.5*F.cross_entropy(out[:, 10:], v)
    assert MultiTarget([LABELS, VARIETIES], weights=[1, 0.5])(out, d, v) == pytest.approx(half.item())
    assert MultiTarget([LABELS, VARIETIES], weights=[1, 0])(out, d, v) == pytest.approx(F.cross_entropy(out[:, :10], d).item())
    probs = mt.activation(out)
    assert torch.allclose(probs[:, :10], F.softmax(out[:, :10], dim=1)) and torch.allclose(probs[:, 10:], F.softmax(out[:, 10:], dim=1))
    assert torch.allclose(probs.sum(dim=1), torch.full((16,), 2.))
    dec = mt.decodes(probs)
    assert torch.equal(dec[0], out[:, :10].argmax(1)) and torch.equal(dec[1], out[:, 10:].argmax(1))
    assert repr(mt) == 'MultiTarget(disease: 10, variety: 10)'
    assert [f.__name__ for f in MultiTarget([LABELS, 'ab']).metrics] == ['target0_err', 'target1_err', 'target0_loss', 'target1_loss']


def test_multitarget_refuses_mistakes_that_train_silently(batch):
    "A target dropped by a short `weights` or `names`, a head of the wrong size, a batch with too few targets."
    out, d, v = batch
    with pytest.raises(PaddyError, match='2 targets, 2 names, 1 weights: give one of each per target'):
        MultiTarget([LABELS, VARIETIES], weights=[1])
    with pytest.raises(PaddyError, match='2 targets, 1 names, 2 weights'):
        MultiTarget([LABELS, VARIETIES], names=['disease'])
    mt = MultiTarget([LABELS, VARIETIES])
    with pytest.raises(PaddyError, match='The model has 10 outputs but the targets need 20: use n_out=20'):
        mt(out[:, :10], d, v)
    with pytest.raises(PaddyError, match='has 25 outputs'): mt(torch.randn(16, 25), d, v)
    with pytest.raises(PaddyError, match='has 10 outputs'): mt.metrics[0](out[:, :10], d, v)
    with pytest.raises(ValueError, match='zip'): mt(out, d)  # one target in the batch for two in the model


def test_from_dls_reads_the_targets(demo):
    "Vocabularies from each target's `Categorize`; one-target DataLoaders too; no non-category targets."
    dls = small_dls(demo)
    mt = MultiTarget.from_dls(dls)
    assert mt.vocabs == dls.vocab == [list(LABELS), list(VARIETIES)] and mt.names == ['disease', 'variety']
    assert MultiTarget.from_dls(dls, names=['d', 'v']).names == ['d', 'v']
    assert MultiTarget.from_dls(paddy_dls(demo, size=32, item=Resize(48), bs=8, num_workers=0)).sizes == [10]
    df = pd.read_csv(demo/'train.csv', index_col='image_id')
    def other(block, y):
        return DataBlock(blocks=(ImageBlock, CategoryBlock, block), n_inp=1, get_items=get_image_files,
                         get_y=[parent_label, y]).dataloaders(demo/'train_images', bs=8, num_workers=0)
    with pytest.raises(PaddyError, match='Each target needs a `CategoryBlock`'):
        MultiTarget.from_dls(other(RegressionBlock, lambda p: float(df.loc[p.name, 'age'])))
    with pytest.raises(PaddyError, match='Each target needs a `CategoryBlock`'):  # cross-entropy would take its 0/1 rows silently
        MultiTarget.from_dls(other(MultiCategoryBlock, lambda p: [df.loc[p.name, 'variety']]))


def test_paddy_vocabularies_fixed_on_a_subset(demo):
    "Trained on one label's folder, the Paddy targets keep the competition's 10+10 classes, so the head and order don't change."
    dls = small_dls(demo, trn_path=demo/'train_images'/'blast', valid_pct=0.25)
    mt = MultiTarget.from_dls(dls)
    assert mt.vocabs == [list(LABELS), list(VARIETIES)] and mt.n_out == 20


def test_multitarget_dls_is_the_course_datablock(demo):
    "Same split and vocabularies as the course's DataBlock; a single getter; fastai's own count check on `blocks`."
    course = DataBlock(blocks=(ImageBlock, CategoryBlock, CategoryBlock), n_inp=1, get_items=get_image_files,
                       get_y=[parent_label, get_variety], splitter=RandomSplitter(0.2, seed=0),
                       item_tfms=Resize(48, method='squish'), batch_tfms=aug_transforms(size=32, min_scale=0.75)
                      ).dataloaders(demo/'train_images', bs=16, num_workers=0)
    dls = small_dls(demo)
    assert dls.valid_ds.items == course.valid_ds.items and dls.vocab == course.vocab
    assert dls.target_names == ['disease', 'variety']
    assert [o.shape for o in dls.one_batch()] == [(16, 3, 32, 32), (16,), (16,)]
    one = small_dls(demo, get_y=get_variety, names='variety')
    assert one.target_names == ['variety'] and MultiTarget.from_dls(one).vocabs == [list(VARIETIES)]
    with pytest.raises(ValueError, match='get_y contains 2 functions, but must contain 3'):
        small_dls(demo, blocks=[CategoryBlock]*3)
    with pytest.raises(ValueError, match='get_y contains 2 functions, but must contain 1'):
        small_dls(demo, vocabs=[LABELS])


def test_any_number_of_targets(demo):
    "A third target (the plant's age), its vocabulary from the data, weighted: sizes, metric names, the loss."
    df = pd.read_csv(demo/'train.csv', index_col='image_id')
    def get_age(p): return str(df.loc[Path(p).name, 'age'])
    dls = small_dls(demo, get_y=[parent_label, get_variety, get_age], names=['disease', 'variety', 'age'])
    learn = multitarget_learner(dls, 'resnet18', pretrained=False, weights=[1, 0.5, 0.5])
    mt = learn.loss_func
    assert mt.sizes == [10, 10, df.age.nunique()] and learn.model[-1][-1].out_features == mt.n_out
    assert [f.__name__ for f in learn.metrics.attrgot('func')] == ['disease_err', 'variety_err', 'age_err',
                                                                  'disease_loss', 'variety_loss', 'age_loss']
    x, *ys = dls.one_batch()
    out = learn.model(x)  # a TensorImage: the loss takes it as it comes
    o, (d, v, a) = out.as_subclass(torch.Tensor), [y.as_subclass(torch.Tensor) for y in ys]
    want = F.cross_entropy(o[:, :10], d) + 0.5*F.cross_entropy(o[:, 10:20], v) + 0.5*F.cross_entropy(o[:, 20:], a)
    assert mt(out, *ys).item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(PaddyError, match='3 targets, 2 names'):  # a name left out: caught when the learner is built
        multitarget_learner(small_dls(demo, get_y=[parent_label, get_variety, get_age]), 'resnet18', pretrained=False)


def test_learner_options(demo, learn):
    "The course's timm name is mapped; fp32 on a CPU; `metrics` overrides; `n_out` and the loss are the learner's own."
    assert learn.model[-1][-1].out_features == 20 and isinstance(learn.loss_func, MultiTarget)
    assert [m.__name__ for m in learn.metrics.attrgot('func')] == [f.__name__ for f in COURSE]
    tiny = multitarget_learner(small_dls(demo), 'convnext_tiny_in22k', pretrained=False)
    assert tiny.model[-1][-1].out_features == 20
    assert not any(isinstance(cb, MixedPrecision) for cb in learn.cbs + tiny.cbs)
    assert len(multitarget_learner(small_dls(demo), 'resnet18', pretrained=False, metrics=[]).metrics) == 0
    with pytest.raises(PaddyError, match="precision='fp16' needs a CUDA GPU"):
        multitarget_learner(small_dls(demo), 'resnet18', pretrained=False, precision='fp16')
    with pytest.raises(TypeError, match='n_out'): multitarget_learner(small_dls(demo), 'resnet18', pretrained=False, n_out=12)


def test_wrong_head_fails_before_any_step(demo):
    "A hand-built learner with the library's loss but a 10-output head fails on its first batch, weights untouched."
    dls = small_dls(demo)
    set_seed(0)
    by_hand = vision_learner(dls, 'resnet18', pretrained=False, loss_func=MultiTarget.from_dls(dls), n_out=10)
    before = [p.detach().clone() for p in by_hand.model.parameters()]
    with by_hand.no_bar(), by_hand.no_logging(), pytest.raises(PaddyError, match='has 10 outputs but the targets need 20'):
        by_hand.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(before, by_hand.model.parameters()))


def test_zero_weight_target_gets_no_gradient(demo):
    "A target with weight 0 is out of the loss: its head rows get exactly zero gradient, the others don't."
    set_seed(0)
    learn = multitarget_learner(small_dls(demo), 'resnet18', pretrained=False, weights=[1, 0])
    x, d, v = learn.dls.one_batch()
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


def test_predict_targets(demo, learn):
    "Labels and probabilities from a softmax per target; one image; the course's learner; TTA on the test set."
    items = get_image_files(demo/'train_images')[:4]
    preds = predict_targets(learn, items)
    raw = learn.get_preds(dl=learn.dls.test_dl(items), act=lambda o: o)[0]
    assert list(preds.columns) == ['image_id', 'disease', 'disease_prob', 'variety', 'variety_prob']
    assert preds.image_id.tolist() == [o.name for o in items]
    assert preds.disease.tolist() == [LABELS[i] for i in raw[:, :10].argmax(1)]
    assert preds.variety.tolist() == [VARIETIES[i] for i in raw[:, 10:].argmax(1)]
    assert preds.variety_prob.values == pytest.approx(F.softmax(raw[:, 10:], dim=1).max(1).values.numpy(), abs=1e-6)
    pd.testing.assert_frame_equal(predict_targets(learn, items[0]), preds.iloc[:1])  # one image: one row
    with pytest.raises(PaddyError, match='No images to predict'): predict_targets(learn, [])
    course = vision_learner(learn.dls, 'resnet18', pretrained=False, loss_func=combine_loss, n_out=20)
    course.model.load_state_dict(learn.model.state_dict())
    pd.testing.assert_frame_equal(predict_targets(course, items, names=['disease', 'variety']), preds)
    assert course.loss_func is combine_loss  # restored
    files = get_test_files(demo)
    set_seed(0)
    tst, (dprobs, vprobs) = predict_targets(learn, files, tta=True, with_probs=True)
    assert tst.image_id.tolist() == [f.name for f in files]
    assert tst.disease.isin(LABELS).all() and tst.variety.isin(VARIETIES).all()
    assert torch.allclose(dprobs.sum(dim=1), torch.ones(len(files))) and torch.allclose(vprobs.sum(dim=1), torch.ones(len(files)))


def test_fastai_predict_decodes_both_targets(demo, learn):
    "`learn.predict` decodes through `MultiTarget.decodes`: both labels, the argmax of each target's probabilities."
    (d, v), _, prob = learn.predict(get_image_files(demo/'train_images')[0])
    assert (d, v) == (LABELS[prob[:10].argmax()], VARIETIES[prob[10:].argmax()])


def test_submission(demo, learn, tmp_path):
    "The disease head's TTA labels, in sample_submission's order, written as read back; an unknown target is refused."
    set_seed(0)
    tst = predict_targets(learn, get_test_files(demo), tta=True)
    set_seed(0)
    sub = multitarget_submission(learn, demo, fname=tmp_path/'sub.csv')
    assert list(sub.columns) == ['image_id', 'label']
    assert sub.image_id.tolist() == pd.read_csv(demo/'sample_submission.csv').image_id.tolist()
    assert sub.label.tolist() == tst.set_index('image_id').loc[sub.image_id].disease.tolist()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'sub.csv', dtype=str), sub)
    with pytest.raises(PaddyError, match="No target 'age': the targets are disease, variety"):
        multitarget_submission(learn, demo, target='age')


def test_exported_learner_predicts_in_a_fresh_process(demo, learn, tmp_path):
    "`export` pickles the `MultiTarget` loss by reference to paddy_lib: a new process decodes both targets."
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


@pytest.mark.parametrize('scale', ['demo', 'full'])
def test_pretrained_none_follows_the_dataset_not_the_machine(demo, tmp_path, monkeypatch, scale):
    """`pretrained=None`: random weights on demo data (also through the course's DataLoaders, which have no `data_path`),
    pretrained on any other, whatever `PADDY_SCALE` says."""
    monkeypatch.setenv('PADDY_SCALE', scale)
    real = Path(shutil.copytree(demo, tmp_path/'real'))
    (real/'.paddy_demo.json').unlink()
    course = DataBlock(blocks=(ImageBlock, CategoryBlock, CategoryBlock), n_inp=1, get_items=get_image_files,
                       get_y=[parent_label, get_variety], item_tfms=Resize(48)).dataloaders(demo/'train_images', bs=8, num_workers=0)
    class Recorded(Exception): pass
    def chosen(dls):
        seen = {}
        def fake(*a, **k): seen.update(k); raise Recorded
        with monkeypatch.context() as m:
            m.setattr(pm, 'vision_learner', fake)
            with pytest.raises(Recorded): multitarget_learner(dls, 'resnet18')
        return seen['pretrained']
    assert (chosen(small_dls(demo)), chosen(small_dls(real)), chosen(course)) == (False, True, False)
    assert pm.dls_dataset(small_dls(real)) == real and pm.dls_dataset(course) == demo
    set_seed(1); a = multitarget_learner(small_dls(demo), 'resnet18')
    set_seed(1); b = multitarget_learner(small_dls(demo), 'resnet18', pretrained=False)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
