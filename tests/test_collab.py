"""paddy_lib.collab's corner cases: MovieLens 100k's on-disk format, loading offline, error wording, the helpers' edges.

The notebook (nbs/05_collab.ipynb) holds the lesson and one check per claim; these tests pin the file format with lines
written by hand the way GroupLens ships them, run the whole pipeline on such a folder, and hold the edge cases.
"""
import re, socket, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from fastai.collab import collab_learner
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.torch_core import set_seed
import paddy_lib.collab as collab
from paddy_lib.collab import (CollabError, RATING_COLS, synth_ratings, check_ratings, read_ml100k, load_movielens,
                              collab_dls, collab_sizes, mean_baseline, DotProductBias, item_params, item_bias_table,
                              factor_pca, similar_items)

def write_ml100k(ratings, dest):
    "Write `ratings` as a MovieLens 100k folder: `u.data`, and `u.item` with its 24 pipe-separated latin-1 fields."
    items = ratings[['movie','title']].drop_duplicates().sort_values('movie')
    assert not items.movie.duplicated().any() and not items.title.str.contains('|', regex=False).any()
    lines = []
    for m,t in items.itertuples(index=False):
        year = re.search(r'\((\d{4})\)\s*$', t)  # u.item: id|title|release date|video release date|IMDb URL|19 genre flags
        lines.append('|'.join([str(m), t, f'01-Jan-{year[1]}' if year else '', '', 'http://us.imdb.com/'] + ['0']*19))
    item_bytes = ('\n'.join(lines)+'\n').encode('latin-1')  # u.item is latin-1: UnicodeEncodeError for other titles
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    ratings[['user','movie','rating','timestamp']].to_csv(dest/'u.data', sep='\t', header=False, index=False)
    (dest/'u.item').write_bytes(item_bytes)
    return dest

# Lines in the format of the real files: u.data is tab-separated user, movie, rating, timestamp;
# u.item is pipe-separated latin-1: id|title|release date|video release date|IMDb URL|19 genre flags.
U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n244\t51\t2\t880606923\n196\t51\t5\t881250950\n"
U_ITEM = [
    "51|Legends of the Fall (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Legends%20of%20the%20Fall%20(1994)|0|1|0|0|0|0|0|0|1|0|0|0|0|0|1|0|0|1|1",
    "242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "302|L.A. Confidential (1997)|01-Jan-1997||http://us.imdb.com/M/title-exact?L%2EA%2E+Confidential+(1997)|0|0|0|0|0|0|1|0|0|0|1|0|1|0|0|0|1|0|0",
    "377|Heavyweights (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Heavyweights%20(1994)|0|0|0|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "1216|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables%2C%20Les%20%281995%29|0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0",
]

@pytest.fixture
def ml_folder(tmp_path):
    d = tmp_path/'ml-100k'; d.mkdir()
    (d/'u.data').write_text(U_DATA)
    (d/'u.item').write_bytes(('\n'.join(U_ITEM)+'\n').encode('latin-1'))
    return d

def test_reads_the_real_format(ml_folder):
    r = load_movielens(ml_folder)
    assert tuple(r.columns) == RATING_COLS
    assert len(r) == 5  # no rating lost in the merge
    row = r[(r.user == 196) & (r.movie == 242)].iloc[0]
    assert (row.rating, row.timestamp, row.title) == (3, 881250949, 'Kolya (1996)')
    assert set(r[r.movie == 51].title) == {'Legends of the Fall (1994)'}
    assert r.rating.dtype.kind == 'i' and r.user.dtype.kind == 'i'

def test_latin1_title_round_trips(ml_folder, tmp_path):
    r = read_ml100k(ml_folder)
    extra = pd.DataFrame({'user': [7], 'movie': [1216], 'rating': [4], 'timestamp': [881250951],
                          'title': ['Misérables, Les (1995)']})
    out = write_ml100k(pd.concat([r, extra], ignore_index=True), tmp_path/'copy')
    assert 'Misérables'.encode('latin-1') in (out/'u.item').read_bytes()
    back = read_ml100k(out)
    assert 'Misérables, Les (1995)' in set(back.title)
    # our writer's u.item has the real file's 24 fields per line
    assert {len(l.split('|')) for l in (out/'u.item').read_text(encoding='latin-1').splitlines()} == {24}

def test_writer_and_reader_agree_on_synthetic(tmp_path):
    r = synth_ratings(n_users=50, n_items=40, n_ratings=600, seed=1)
    back = load_movielens(write_ml100k(r, tmp_path/'ml'))
    key = ['user', 'movie']
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True), r.sort_values(key).reset_index(drop=True))

def test_pipeline_runs_unchanged_on_a_real_format_folder(tmp_path):
    "The lesson's code, unchanged, on ratings read from a folder in the real format."
    folder = write_ml100k(synth_ratings(n_users=150, n_items=100, n_ratings=6000, seed=3), tmp_path/'ml-100k')
    ratings = load_movielens(folder)
    assert 'planted' not in ratings.attrs  # read from disk: nothing synthetic rides along
    dls = collab_dls(ratings, bs=256)
    n_users, n_movies = collab_sizes(dls)
    assert (n_users, n_movies) == (ratings.user.nunique()+1, ratings.title.nunique()+1)
    set_seed(0)
    learn = Learner(dls, DotProductBias(n_users, n_movies, 20), loss_func=MSELossFlat())
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2, wd=0.1)
    assert float(learn.recorder.values[-1][1]) < mean_baseline(dls)  # it learned something
    bt = item_bias_table(learn, n=3)
    assert list(bt.which) == ['lowest']*3 + ['highest']*3 and set(bt.title) <= set(ratings.title)
    pcs = factor_pca(learn)
    assert list(pcs.columns) == ['PC1', 'PC2', 'n_ratings'] and set(pcs.index) <= set(ratings.title)
    sim = similar_items(learn, pcs.n_ratings.idxmax(), n=4)
    assert len(sim) == 4 and sim.similarity.is_monotonic_decreasing

def test_not_a_movielens_folder(tmp_path, ml_folder):
    with pytest.raises(CollabError, match='not a MovieLens 100k folder'): load_movielens(tmp_path/'missing')
    (ml_folder/'u.item').unlink()
    with pytest.raises(CollabError, match='no u.item'): load_movielens(ml_folder)

def test_ratings_of_unknown_movies_are_not_dropped(ml_folder):
    (ml_folder/'u.data').write_text(U_DATA + "5\t999\t4\t881250952\n")
    with pytest.raises(CollabError, match='no line in u.item'): read_ml100k(ml_folder)

def test_offline_without_data_warns_and_synthesises(tmp_path, monkeypatch):
    monkeypatch.setattr(collab, 'ml100k_cache', lambda: tmp_path/'no-cache')
    def boom(*a, **k): raise AssertionError('must not download unless asked')
    monkeypatch.setattr(collab, 'untar_data', boom)
    with pytest.warns(UserWarning, match='download=True'):
        r = load_movielens(n_users=30, n_items=20, n_ratings=200)
    assert tuple(r.columns) == RATING_COLS and len(r) == 200 and 'planted' in r.attrs

def test_cached_copy_is_used(tmp_path, ml_folder, monkeypatch):
    monkeypatch.setattr(collab, 'ml100k_cache', lambda: ml_folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        r = load_movielens()
    assert len(r) == 5 and 'planted' not in r.attrs  # the cached real data, not the synthetic fallback
    assert not [w for w in caught if 'synth_ratings' in str(w.message)]

def test_failed_download_is_a_clear_error_and_restores_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(collab, 'ml100k_cache', lambda: tmp_path/'no-cache')
    seen = {}
    def offline(url, **kw):
        seen['timeout'] = socket.getdefaulttimeout()
        raise OSError('[Errno 101] Network is unreachable')
    monkeypatch.setattr(collab, 'untar_data', offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(CollabError, match='could not download MovieLens 100k'): load_movielens(download=True, timeout=2)
    assert seen['timeout'] == 2 and socket.getdefaulttimeout() == before

def test_bad_ratings():
    r = synth_ratings(n_users=20, n_items=10, n_ratings=100)
    with pytest.raises(CollabError, match=r"missing column\(s\) \['user'\]"): collab_dls(r.drop(columns='user'))
    with pytest.raises(CollabError, match='empty'): collab_dls(r.iloc[:0])
    with pytest.raises(CollabError, match='distinct'): synth_ratings(n_users=3, n_items=3, n_ratings=10)
    with pytest.raises(CollabError, match='noise > 0'): synth_ratings(noise=0)

def test_synthetic_is_deterministic_and_bounded():
    a, b = synth_ratings(n_users=40, n_items=30, n_ratings=500, seed=7), synth_ratings(n_users=40, n_items=30, n_ratings=500, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert a.rating.between(1, 5).all() and not a.duplicated(['user', 'movie']).any()
    p = a.attrs['planted']
    assert np.allclose(p.probs(a).sum(1), 1) and 0 < p.noise_floor(a) < a.rating.var()

# --- moved from the notebook (nbs/05_collab.ipynb): the data's shape and the loaders' edges ---

def test_default_synthetic_ratings_are_movielens_shaped():
    r = synth_ratings()
    assert tuple(r.columns) == RATING_COLS and len(r) == 50_000
    assert sorted(r.rating.unique()) == [1, 2, 3, 4, 5]
    assert r.groupby('movie').title.nunique().max() == 1  # one title per movie
    p, row = r.attrs['planted'], r.iloc[0]  # the planted score is mean + biases + the factors' dot product
    u, i = row.user-1, row.movie-1
    by_hand = p.mean + p.user_bias[u] + p.item_bias[i] + (p.user_factors[u]*p.item_factors[i]).sum()
    assert np.isclose(p.score(r.iloc[:1])[0], by_hand)

def test_collab_dls_holds_out_a_fifth():
    r = synth_ratings(n_users=60, n_items=40, n_ratings=1000)
    assert len(collab_dls(r, bs=64).valid.items) == len(r)//5

def test_bad_ratings_say_what_to_change():
    r = synth_ratings(n_users=20, n_items=10, n_ratings=100)
    with pytest.raises(CollabError, match=r"missing column\(s\) \['title'\]"): collab_dls(r.rename(columns={'title':'name'}))
    with pytest.raises(CollabError, match='must be numeric'): collab_dls(r.assign(rating=r.rating.astype(str)))
    with pytest.raises(CollabError, match='missing values'): collab_dls(r.assign(user=np.where(r.index<3, np.nan, r.user)))
    with pytest.raises(CollabError, match='pandas DataFrame'): check_ratings(r.values)
    assert check_ratings(r) is r

def test_writer_refuses_a_title_latin1_cannot_hold(tmp_path):
    r = synth_ratings(n_users=20, n_items=10, n_ratings=100)
    with pytest.raises(UnicodeEncodeError): write_ml100k(r.assign(title='Ōkami (2006)'), tmp_path/'x')

def test_a_download_is_read_like_any_folder(tmp_path, ml_folder, monkeypatch):
    monkeypatch.setattr(collab, 'ml100k_cache', lambda: tmp_path/'no-cache')
    monkeypatch.setattr(collab, 'untar_data', lambda url, **kw: ml_folder)  # a "download" that lands a folder
    assert len(load_movielens(download=True)) == 5

# --- the reading helpers on small trained learners ---

@pytest.fixture(scope='module')
def trained():
    "A `DotProductBias` and a `use_nn` learner, 2 epochs each on small synthetic ratings."
    dls = collab_dls(synth_ratings(n_users=120, n_items=80, n_ratings=4000, seed=5), bs=256)
    set_seed(0)
    dpb = Learner(dls, DotProductBias(*collab_sizes(dls), 20), loss_func=MSELossFlat())
    nn_ = collab_learner(dls, use_nn=True, y_range=(0,5.5), layers=[20])
    for l in (dpb, nn_):
        with l.no_bar(), l.no_logging(): l.fit_one_cycle(2, 1e-2, wd=0.1)
    return dpb, nn_

def test_item_bias_table(trained):
    dpb, nn_ = trained
    bt = item_bias_table(dpb)
    assert len(bt) == 10 and list(bt.which) == ['lowest']*5 + ['highest']*5
    assert len(item_bias_table(dpb, n=None)) == len(item_params(dpb).items)  # every item with training ratings
    with pytest.raises(CollabError, match='no item bias'): item_bias_table(nn_)

def test_factor_pca(trained):
    dpb, _ = trained
    pcs = factor_pca(dpb, n_components=4, n_items=50)
    assert list(pcs.columns) == ['PC1','PC2','PC3','PC4','n_ratings'] and len(pcs) == 50
    assert pcs.n_ratings.min() >= item_params(dpb).items.n_ratings.nlargest(50).min()  # the most-rated ones
    assert np.allclose(np.corrcoef(pcs[['PC1','PC2','PC3','PC4']].to_numpy().T), np.eye(4), atol=1e-4)  # uncorrelated

def test_similar_items(trained):
    dpb, nn_ = trained
    start = factor_pca(dpb).n_ratings.idxmax()
    sim = similar_items(dpb, start)
    assert len(sim) == 5 and start not in set(sim.title)
    assert sim.similarity.is_monotonic_decreasing and sim.similarity.max() <= 1
    with pytest.raises(CollabError, match='close matches'): similar_items(dpb, start.lower())
    with pytest.raises(CollabError, match='is not one of the'): similar_items(dpb, 'No Such Movie at All')
    assert len(similar_items(nn_, start)) == 5  # the neural net's embeddings work too

def test_similar_items_of_an_item_never_trained(tmp_path):
    r = synth_ratings(n_users=60, n_items=40, n_ratings=1000, seed=2)
    lone = r.iloc[[0]].assign(movie=41, title='Lone Movie (1990)')  # its one rating falls in the validation set
    dls = collab_dls(pd.concat([r, lone], ignore_index=True), bs=128)
    assert len(r) in dls.valid.items.index  # the fixed split (seed 42) holds the lone rating out
    learn = Learner(dls, DotProductBias(*collab_sizes(dls), 5), loss_func=MSELossFlat())
    with pytest.raises(CollabError, match='no training ratings'): similar_items(learn, 'Lone Movie (1990)')
