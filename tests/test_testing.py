"""paddy_lib.testing: the local Kaggle stand-in answers like Kaggle, only on the loopback, and leaves the
environment as it found it; `loopback_only` and `no_kaggle_credentials` undo themselves."""
import base64, http.client, json, os, socket, time
import pytest
from paddy_lib.core import kaggle_credentials
from paddy_lib.testing import LocalKaggle, loopback_only, no_kaggle_credentials

RPC = '/api/v1/datasets.DatasetApiService/GetDatasetStatus'

def _call(lk, path=RPC, body=b'{}', host='localhost', method='POST', key=None, **kw):
    "Send one request to the stand-in as the client does through its proxy (absolute URL); its status and JSON."
    auth = 'Basic ' + base64.b64encode(f'{lk.user}:{key or lk.key}'.encode()).decode()
    c = http.client.HTTPConnection('127.0.0.1', lk.port, timeout=10)
    try:
        c.request(method, path if method == 'CONNECT' else f'http://{host}{path}', body=body, headers={'Authorization': auth, **kw.pop('headers', {})}, **kw)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b'{}')
    finally: c.close()

def test_no_kaggle_credentials_empties_and_restores(monkeypatch):
    monkeypatch.setenv('KAGGLE_USERNAME', 'someone'); monkeypatch.setenv('KAGGLE_KEY', 'k')
    before = dict(os.environ)
    with no_kaggle_credentials() as home:
        assert kaggle_credentials() is None and os.environ['HOME'] == str(home)
    assert dict(os.environ) == before and not home.exists()

def test_local_kaggle_points_the_environment_and_restores_it(monkeypatch):
    monkeypatch.setenv('KAGGLE_API_TOKEN', 'a-real-token')  # would win over the stand-in's user and key
    before = dict(os.environ)
    with LocalKaggle() as lk:
        assert lk.running and os.environ['HTTPS_PROXY'] == lk.url == f'http://127.0.0.1:{lk.port}'
        assert os.environ['KAGGLE_API_ENVIRONMENT'] == 'LOCALHOST' and 'KAGGLE_API_TOKEN' not in os.environ
    assert not lk.running and dict(os.environ) == before
    lk.stop()  # idempotent

def test_answers_like_kaggle():
    with LocalKaggle(datasets=['paddy-student/paddy-lib']) as lk:
        assert _call(lk, body=b'{"ownerSlug": "paddy-student", "datasetSlug": "paddy-lib"}') == (200, {'status': 'READY'})
        assert _call(lk, body=b'{"ownerSlug": "paddy-student", "datasetSlug": "nope"}')[0] == 404
        assert _call(lk, key='wrong')[0] == 401
        assert _call(lk, '/api/v1/x.XApiService/NoSuchMethod')[0] == 404
        start = _call(lk, '/api/v1/blobs.BlobApiService/StartBlobUpload', b'{"name": "a.whl", "contentLength": 3}')[1]
        assert _call(lk, '/upload/' + start['token'], b'ab', method='PUT')[0] == 400  # 2 bytes, 3 announced
        assert _call(lk, '/upload/' + start['token'], b'abc', method='PUT')[0] == 200
        assert lk.blobs[start['token']]['data'] == b'abc'
    assert lk.calls() == ['DatasetApiService/GetDatasetStatus'] * 3 + ['XApiService/NoSuchMethod', 'BlobApiService/StartBlobUpload']

def test_only_answers_for_localhost():
    with LocalKaggle() as lk:
        assert _call(lk, host='api.kaggle.com')[0] == 403
        assert _call(lk, 'api.kaggle.com:443', method='CONNECT')[0] == 405  # no tunnel to anywhere
    assert [(r.method, r.path) for r in lk.requests] == [('POST', RPC), ('CONNECT', 'api.kaggle.com:443')]
    assert lk.requests[0].host == 'api.kaggle.com'

def test_reads_a_chunked_body():
    with LocalKaggle() as lk:
        _call(lk, body=iter([b'{"ownerSlug": "a", ', b'"datasetSlug": "b"}']), encode_chunked=True,
              headers={'Transfer-Encoding': 'chunked'})
    assert lk.requests[0].json() == {'ownerSlug': 'a', 'datasetSlug': 'b'}

def test_stops_after_max_requests_and_after_timeout():
    with LocalKaggle(max_requests=1) as lk:
        assert _call(lk)[0] == 404 and _call(lk)[0] == 503
        for _ in range(100):
            if not lk.running: break
            time.sleep(0.05)
        assert not lk.running
    lk = LocalKaggle(timeout=0.2).start()
    for _ in range(100):
        if not lk.running: break
        time.sleep(0.05)
    assert not lk.running

def test_loopback_only_refuses_records_and_restores():
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo
    with loopback_only() as outside:
        with pytest.raises(socket.gaierror, match='refused to look up example.com'): socket.getaddrinfo('example.com', 80)
        with socket.socket() as s, pytest.raises(ConnectionRefusedError): s.connect(('192.0.2.1', 80))
        assert socket.getaddrinfo('localhost', 80)
    assert outside == [('example.com', 80), ('192.0.2.1', 80)]
    assert (socket.socket.connect, socket.getaddrinfo) == (connect, getaddrinfo)
