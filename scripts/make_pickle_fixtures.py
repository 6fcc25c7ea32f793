"""Writes the fixtures of test/pickle.test.ts and test/torch-checkpoint.test.ts into test/fixtures/pickle/.

Run with /usr/bin/python3 (PyTorch 1.13, numpy). The expected values in manifest.json come from
Python itself: pickle.loads of each plain pickle, the tensors torch.save was given. Nothing here ever
unpickles the malicious fixtures; they are only written.

Tagged JSON encoding of Python values (manifest.json "values"), so types survive JSON:
  None/bool/str → as is; int → a JSON number if |n| <= 2**53-1, else {"int": "<decimal>"};
  float → {"float": repr}; bytes → {"bytes": hex}; bytearray → {"bytearray": hex};
  tuple → {"tuple": [...]}; list → [...]; dict (and OrderedDict) → {"dict": [[key, value], ...]};
  set → {"set": [...]}; frozenset → {"frozenset": [...]} (sets compare without order).
"""
import collections
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt import GPT, GPTConfig, microgpt_config, model_args, parameter_state  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'pickle')
# Every malicious payload would create this file; the tests check that it never appears.
MARKER = '/tmp/microgpt-pickle-payload-ran'
MAX_SAFE = 2 ** 53 - 1


def tag(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v if abs(v) <= MAX_SAFE else {'int': str(v)}
    if isinstance(v, float):
        return {'float': repr(v)}
    if isinstance(v, bytes):
        return {'bytes': v.hex()}
    if isinstance(v, bytearray):
        return {'bytearray': v.hex()}
    if isinstance(v, tuple):
        return {'tuple': [tag(x) for x in v]}
    if isinstance(v, list):
        return [tag(x) for x in v]
    if isinstance(v, dict):
        return {'dict': [[tag(k), tag(x)] for k, x in v.items()]}
    if isinstance(v, frozenset):
        return {'frozenset': [tag(x) for x in v]}
    if isinstance(v, set):
        return {'set': [tag(x) for x in v]}
    raise TypeError(f'cannot tag {type(v)}')


def write(name, data):
    with open(os.path.join(OUT, name), 'wb') as f:
        f.write(data)


class RecordingUnpickler(pickle.Unpickler):
    """For handmade pickles with persistent ids: Python's own answer, as ('persistent', pid)."""

    def persistent_load(self, pid):
        return ('persistent', pid)


def loads(data):
    with warnings.catch_warnings():
        # handmade_text.pkl has an unknown escape (\\q) on purpose; Python keeps it and warns.
        warnings.simplefilter('ignore', DeprecationWarning)
        return RecordingUnpickler(io.BytesIO(data)).load()


# ---- plain data in every protocol ---------------------------------------------------------------

def plain_value():
    return {
        'none': None, 'true': True, 'false': False,
        'ints': [0, 1, -1, 255, 256, 65535, 65536, 2 ** 31 - 1, -2 ** 31, 2 ** 31, -2 ** 31 - 1,
                 MAX_SAFE, -MAX_SAFE, 2 ** 53, -2 ** 53, 2 ** 63 - 1, -2 ** 63, 2 ** 64, 2 ** 100, -2 ** 100,
                 12345678901234567890123456789],
        'floats': [0.0, -0.0, 0.1, -2.5, 1e308, 5e-324, float('inf'), float('-inf'), float('nan'), 3.141592653589793, 1.0],
        'strs': ['', 'a', 'line\nbreak\r\x1a\x00 tab\t back\\slash "quote\'s"', 'é ü 中文 😀', 'x' * 300,
                 '\\u0041 is not an escape', 'lone \ud800 surrogate'],
        'bytes': [b'', b'\x00\xff\n\\', bytes(range(256)), b'y' * 300],
        'bytearray': bytearray(b'ab\x00c\xff'),
        'empty_bytearray': bytearray(),
        'tuples': [(), (1,), (1, 'two'), (1, 2, 3), (1, 2, 3, 4, 5)],
        'nested': [[1, [2, [3, []]]], {'k': (4, [5])}],
        'int_keys': {0: '\n', 1: 'a', -5: 'neg', 2 ** 70: 'big'},
        'mixed_keys': {1: 'int', '1': 'str', (1, 2): 'tuple', 1.5: 'float', None: 'none', b'k': 'bytes'},
        'set': {1, 2, 'three'}, 'frozenset': frozenset({4, 5}), 'empty_set': set(), 'empty_frozenset': frozenset(),
        'ordered': collections.OrderedDict([('b', 1), ('a', 2)]),
        'long_list': list(range(1010)),  # longer than the pickler's 1000-item APPENDS batches
        'long_dict': {i: -i for i in range(1010)},  # and its SETITEMS batches
    }


def shared_value():
    a = [1, 2]
    return [a, a, {'x': a}]


def recursive_value():
    lst = [1]
    lst.append(lst)
    d = {}
    d['self'] = d
    return [lst, d]


def framed(body):
    """A protocol 4 pickle whose body is one explicit FRAME."""
    return b'\x80\x04\x95' + len(body).to_bytes(8, 'little') + body


# ---- handmade opcode streams Python 3's pickler never writes, checked by pickle.loads ----------

HANDMADE = {
    # (Expected values are what CPython's C unpickler gives: INT tries C strtol first, so 010 is 8.)
    # Protocol 0 text opcodes: STRING with escapes, INT bools and base prefixes, LONG, FLOAT, MARK
    # containers, text PUT/GET, POP, POP_MARK, DUP, UNICODE with raw-unicode-escape.
    'handmade_text.pkl': (
        b"(lp0\n"
        b"S'plain'\np1\na"
        b"S\"dq \\x41\\101\\n\\\\\\' \\q\"\na"
        b"I01\naI00\naI0x1f\naI-0b101\naI1_000\naI+7\naI-0o17\naI010\naI-12\na"
        b"L123L\naL-99999999999999999999L\na"
        b"F1.5\naFnan\naF-inf\naFInfinity\naF1e-3\naF.5\naF7.\na"
        b"(I1\nI2\ntp2\na"
        b"(S'k'\nI3\ndp3\na"
        b"g1\na"
        b"I9\n0"
        b"(I8\nI8\n1"
        b"(I4\n2ta"
        b"Vsnow \\u2603 \\U0001f600 \\\\u0041 back\\\\slash\np4\na"
        b"."
    ),
    # Protocol 1–2 binary opcodes: BINSTRING, SHORT_BINSTRING, LONG_BINPUT/LONG_BINGET, BININT2,
    # LONG1/LONG4, BINFLOAT, empty APPENDS/SETITEMS, TUPLE1-3, BINPUT/BINGET, MARK'd DICT.
    'handmade_bin.pkl': (
        b"\x80\x02]("
        b"T\x03\x00\x00\x00abcr\x00\x00\x01\x00"
        b"U\x02hi"
        b"M\xff\xff"
        b"\x8a\x00"
        b"\x8a\x02\x00\x80"
        b"\x8b\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
        b"G\x40\x09\x21\xfb\x54\x44\x2d\x18"
        b"K\x01\x85K\x02K\x03\x86K\x04K\x05K\x06\x87"
        b"j\x00\x00\x01\x00"
        b"]q\x01(e"
        b"}q\x02(u"
        b"(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02d"
        b"h\x02"
        b"e."
    ),
    # Protocol 4 with explicit FRAME, MEMOIZE, BINUNICODE8, BINBYTES8, EMPTY_SET + ADDITEMS,
    # FROZENSET and STACK_GLOBAL of a whitelisted global.
    'handmade_p4.pkl': framed(
        b"]\x94("
        b"\x8d\x03\x00\x00\x00\x00\x00\x00\x00abc\x94"
        b"\x8e\x02\x00\x00\x00\x00\x00\x00\x00\x01\x02\x94"
        b"\x8f\x94(K\x01K\x02\x90"
        b"(K\x03\x91"
        b"\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R"
        b"h\x01"
        b"e."
    ),
    # PERSID (text) and BINPERSID ids, resolved by the caller's persistent_load.
    'handmade_persid.pkl': b"(lPtext-id\naK\x05Qa(K\x01X\x01\x00\x00\x00sK\x02tQa.",
}

# Pickles that must be refused, with the global (or operation) the error must name. Only written.
EVIL_HANDMADE = {
    # INST names and calls os.system in one opcode.
    'evil_inst.pkl': (b"(S'touch " + MARKER.encode() + b"'\nios\nsystem\n.", 'os.system'),
    # OBJ calls the class that a GLOBAL just pushed.
    'evil_obj.pkl': (b"(cos\nsystem\nS'touch " + MARKER.encode() + b"'\no.", 'os.system'),
    # EXT1 fetches a callable from the copyreg extension registry.
    'evil_ext.pkl': (b"\x80\x02\x82\x01)R.", 'extension'),
    # BUILD on a plain dict would call its __setstate__ / update its __dict__.
    'evil_build.pkl': (b"\x80\x02}}b.", 'BUILD'),
    # REDUCE whose callable is not a global at all.
    'evil_reduce_str.pkl': (b"\x80\x02X\x04\x00\x00\x00evil)R.", 'REDUCE'),
    # NEWOBJ on a whitelisted builtin that has no __new__ implementation here.
    'evil_newobj.pkl': (b"\x80\x02c__builtin__\nset\n)\x81.", 'NEWOBJ'),
}


class EvilSystem:
    def __reduce__(self):
        return (os.system, (f'touch {MARKER}',))


class EvilEval:
    def __reduce__(self):
        return (eval, (f"open({MARKER!r}, 'w').close()",))


class EvilPopen:
    def __reduce__(self):
        return (subprocess.Popen, (['touch', MARKER],))


TORCH_WHITELIST = {'collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter'}


def first_refused(data):
    """The first global of a torch data.pkl outside what the TypeScript reader allows."""
    for op, arg, _ in pickletools.genops(data):
        if op.name == 'GLOBAL':
            name = arg.replace(' ', '.')
            if name not in TORCH_WHITELIST and not (name.startswith('torch.') and name.endswith('Storage')):
                return name
    return None


def first_global(data):
    """The first global a pickle names, as pickletools reads it (GLOBAL or STACK_GLOBAL)."""
    strings = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE'):
            strings.append(arg)
        if op.name in ('GLOBAL', 'INST'):
            return arg.replace(' ', '.')
        if op.name == 'STACK_GLOBAL':
            return f'{strings[-2]}.{strings[-1]}'
    return None


def make_pickles(manifest):
    values = {}
    plain = None
    for protocol in range(6):
        data = pickle.dumps(plain_value(), protocol=protocol)
        write(f'plain_p{protocol}.pkl', data)
        loaded = tag(pickle.loads(data))
        assert plain is None or loaded == plain  # every protocol loads to the same value
        plain = loaded
    manifest['plain'] = {'files': [f'plain_p{p}.pkl' for p in range(6)], 'value': plain}
    for protocol in (2, 4):
        write(f'shared_p{protocol}.pkl', pickle.dumps(shared_value(), protocol=protocol))
        write(f'recursive_p{protocol}.pkl', pickle.dumps(recursive_value(), protocol=protocol))
        values[f'shared_p{protocol}.pkl'] = tag(pickle.loads(pickle.dumps(shared_value(), protocol=protocol)))
    for name, data in HANDMADE.items():
        write(name, data)
        values[name] = tag(loads(data))
    manifest['values'] = values
    manifest['persistent'] = ['handmade_persid.pkl']

    evil = {}
    for name, obj, protocol in [('evil_os_system.pkl', EvilSystem(), 2), ('evil_eval.pkl', EvilEval(), 4),
                                ('evil_popen.pkl', EvilPopen(), 3), ('evil_os_system_p0.pkl', EvilSystem(), 0),
                                ('evil_nested.pkl', {'ok': [1, 2], 'bad': (EvilSystem(),)}, 5),
                                ('evil_numpy.pkl', np.arange(3, dtype=np.float32), 2)]:
        data = pickle.dumps(obj, protocol=protocol)
        write(name, data)
        evil[name] = first_global(data)
    for name, (data, names) in EVIL_HANDMADE.items():
        write(name, data)
        evil[name] = names
    manifest['malicious'] = evil
    manifest['marker'] = MARKER


# ---- torch checkpoints ---------------------------------------------------------------------------

TINY = dict(n_layer=1, n_head=2, n_embd=4, block_size=4, vocab_size=5, dropout=0.0)


def tiny_model(seed, bias=True):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(bias=bias, **TINY))
    with torch.no_grad():  # LayerNorm starts at ones/zeros: make every value distinct
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def nanogpt_dict(model, **extra):
    ckpt = {'model': model.state_dict(), 'model_args': model_args(model.config)}
    ckpt.update(extra)
    return ckpt


def train_one_step(model):
    """nanoGPT's optimizer (AdamW with decay / no-decay groups) after one step, for its state."""
    params = dict(model.named_parameters())
    groups = [{'params': [p for p in params.values() if p.dim() >= 2], 'weight_decay': 0.1},
              {'params': [p for p in params.values() if p.dim() < 2], 'weight_decay': 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95))
    idx = torch.tensor([[0, 1, 2, 3]])
    _, loss = model(idx, torch.tensor([[1, 2, 3, 4]]))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def expected_tensors(state):
    """Our names (no lm_head, no causal-mask buffer) → shape and float32 values, as Python sees them."""
    return {name: {'shape': list(t.shape), 'values': t.detach().float().reshape(-1).tolist()}
            for name, t in state.items()
            if name != 'lm_head.weight' and not name.endswith('.attn.bias')}


def rewrite_zip(src, dst, edit):
    """Copies a zip entry by entry through edit(name, data) → data or None (drop)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data)
        extra = edit(None, None)
        for name, data in (extra or {}).items():
            zout.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def storage_keys(path, where):
    """Storage keys of the tensors under ckpt[where], found by unpickling data.pkl with stubs."""
    class Stub(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
                return lambda storage, *rest: ('tensor', storage)
            if module == 'torch' and name.endswith('Storage'):
                return name
            return super().find_class(module, name)

        def persistent_load(self, pid):
            return pid[2]

    with zipfile.ZipFile(path) as z:
        root = z.namelist()[0].split('/')[0]
        obj = Stub(io.BytesIO(z.read(f'{root}/data.pkl'))).load()
    keys = set()

    def walk(v):
        if isinstance(v, tuple) and len(v) == 2 and v[0] == 'tensor':
            keys.add(v[1])
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
    walk(obj[where])
    return root, keys


def make_checkpoints(manifest):
    cases = {}
    tensor_files = {}

    def save(name, obj, expect=None, error=None, **kwargs):
        path = os.path.join(OUT, name)
        torch.save(obj, path, **kwargs)
        if error is not None:
            cases[name] = {'error': error}
        elif expect is not None:
            cases[name] = expect
        return path

    def ok(tensors_name, state, model, iter_num, best_val_loss, stored):
        if tensors_name not in tensor_files:
            tensor_files[tensors_name] = expected_tensors(state)
        return {'config': microgpt_config(model.config), 'iterNum': iter_num, 'bestValLoss': best_val_loss,
                'storedDType': stored, 'tensors': tensors_name}

    bad = lambda *includes, code='ERR_BAD_CHECKPOINT': {'code': code, 'includes': list(includes)}  # noqa: E731

    # nanoGPT's train.py checkpoint: state_dict with the tied lm_head and the causal-mask buffers,
    # AdamW state, model_args, iter_num, best_val_loss (a 0-dim tensor) and the config dict.
    model = tiny_model(1)
    optimizer = train_one_step(model)
    best = torch.tensor([2.5, 2.25]).mean()
    config = {'out_dir': 'out-shakespeare-char', 'eval_interval': 250, 'batch_size': 64, 'learning_rate': 1e-3,
              'decay_lr': True, 'beta2': 0.99, 'dtype': 'bfloat16', 'device': 'cuda', 'compile': True, 'wandb_log': False}
    full = nanogpt_dict(model, optimizer=optimizer.state_dict(), iter_num=2000, best_val_loss=best, config=config)
    basic = save('ckpt_basic.pt', full, ok('tensors_basic.json', model.state_dict(), model, 2000, best.item(), 'F32'))
    assert model.state_dict()['lm_head.weight'].data_ptr() == model.state_dict()['transformer.wte.weight'].data_ptr()

    # torch.compile'd model: every key starts with _orig_mod.; best_val_loss still the initial float.
    compiled = collections.OrderedDict(('_orig_mod.' + k, v) for k, v in model.state_dict().items())
    save('ckpt_compiled.pt', {'model': compiled, 'model_args': model_args(model.config), 'iter_num': 0, 'best_val_loss': 1e9},
         ok('tensors_basic.json', model.state_dict(), model, 0, 1e9, 'F32'))

    # lm_head in a storage of its own: accepted when equal to wte, refused when not.
    state = model.state_dict()
    state['lm_head.weight'] = state['lm_head.weight'].clone()
    save('ckpt_lmhead_clone.pt', {'model': state, 'model_args': model_args(model.config)},
         ok('tensors_basic.json', model.state_dict(), model, None, None, 'F32'))
    state = model.state_dict()
    state['lm_head.weight'] = state['lm_head.weight'] + 0.5
    save('ckpt_lmhead_untied.pt', {'model': state, 'model_args': model_args(model.config)},
         error=bad('lm_head.weight is not tied to transformer.wte.weight'))

    # Views: storage offsets, transposes, strided row slices, a column, a zero-stride expansion.
    state = model.state_dict()
    torch.manual_seed(7)
    state['transformer.wpe.weight'] = torch.randn(40)[7:23].view(4, 4)  # offset 7
    state['transformer.h.0.attn.c_attn.weight'] = torch.randn(4, 12).t()  # strides (1, 12)
    state['transformer.h.0.mlp.c_fc.weight'] = torch.randn(32, 4)[1::2]  # offset 4, strides (8, 1)
    state['transformer.h.0.ln_1.weight'] = torch.tensor([0.75]).expand(4)  # stride (0,)
    state['transformer.h.0.ln_2.bias'] = torch.randn(4, 3)[:, 1]  # offset 1, stride (3,)
    state['transformer.h.0.mlp.c_proj.weight'] = torch.randn(8, 40)[1::2, 3:35:2]  # offset 43, strides (80, 2)
    assert not state['transformer.h.0.mlp.c_proj.weight'].is_contiguous()
    save('ckpt_views.pt', {'model': state, 'model_args': model_args(model.config)},
         ok('tensors_views.json', state, model, None, None, 'F32'))

    # Other float types; the tie is kept by converting the model, so wte and lm_head share storage.
    for dtype, tag_name, stored in [(torch.float16, 'f16', 'F16'), (torch.bfloat16, 'bf16', 'BF16'), (torch.float64, 'f64', 'F64')]:
        m = tiny_model(2).to(dtype)
        save(f'ckpt_{tag_name}.pt', nanogpt_dict(m, iter_num=5),
             ok(f'tensors_{tag_name}.json', m.state_dict(), m, 5, None, stored))
    # bfloat16 again with the byteorder record newer torch writes.
    src = os.path.join(OUT, 'ckpt_bf16.pt')
    root = 'ckpt_bf16'
    rewrite_zip(src, os.path.join(OUT, 'ckpt_bf16_byteorder.pt'),
                lambda n, d: {f'{root}/byteorder': b'little'} if n is None else d)
    cases['ckpt_bf16_byteorder.pt'] = dict(cases['ckpt_bf16.pt'])

    # Without biases.
    m = tiny_model(3, bias=False)
    save('ckpt_nobias.pt', nanogpt_dict(m, iter_num=1), ok('tensors_nobias.json', m.state_dict(), m, 1, None, 'F32'))

    # Parameters that cannot be weights.
    state = model.state_dict()
    state['transformer.ln_f.weight'] = torch.ones(4, dtype=torch.int64)
    save('ckpt_int64.pt', {'model': state, 'model_args': model_args(model.config)},
         error=bad('int64', 'transformer.ln_f.weight', 'LongStorage'))
    state = model.state_dict()
    state['transformer.h.0.ln_1.bias'] = torch.zeros(4, dtype=torch.complex64)
    save('ckpt_complex.pt', {'model': state, 'model_args': model_args(model.config)},
         error=bad('complex64', 'transformer.h.0.ln_1.bias'))

    # Globals outside the whitelist inside a checkpoint: a numpy scalar, a payload.
    for name, extra in [('ckpt_numpy.pt', {'best_val_loss': np.float64(1.5)}), ('ckpt_evil.pt', {'config': {'x': EvilSystem()}})]:
        path = save(name, nanogpt_dict(model, **extra))
        with zipfile.ZipFile(path) as z:
            refused = first_refused(z.read(name[:-3] + '/data.pkl'))
        assert refused in ('numpy.core.multiarray.scalar', 'posix.system'), refused
        cases[name] = {'error': bad(f'"{refused}"', code='ERR_UNSAFE_PICKLE')}

    # A decompression bomb made of views: every tensor a zero-stride expansion of one element, so a
    # file of a few KB would decode to megabytes.
    wide = GPT(GPTConfig(bias=True, **{**TINY, 'n_embd': 256}))
    state = collections.OrderedDict((k, torch.zeros([1] * v.dim()).expand(v.shape)) for k, v in wide.state_dict().items())
    save('ckpt_expanded.pt', {'model': state, 'model_args': model_args(wide.config)},
         error=bad('views that repeat storage elements'))

    # Missing model_args (a bare state_dict save).
    save('ckpt_no_model_args.pt', {'model': model.state_dict()}, error=bad('model_args'))

    # Damaged copies of a checkpoint (a small one, without optimizer state).
    small = save('ckpt_small.pt', nanogpt_dict(model, iter_num=3), ok('tensors_basic.json', model.state_dict(), model, 3, None, 'F32'))
    with open(small, 'rb') as f:
        raw = f.read()
    write('ckpt_truncated.pt', raw[: len(raw) * 3 // 5])
    cases['ckpt_truncated.pt'] = {'error': bad('ckpt_truncated.pt')}
    write('ckpt_empty.pt', b'')
    cases['ckpt_empty.pt'] = {'error': bad('not a PyTorch checkpoint')}

    root, model_keys = storage_keys(small, 'model')

    def edit_pkl(n, d):
        return d[: len(d) // 2] if n == f'{root}/data.pkl' else d
    rewrite_zip(small, os.path.join(OUT, 'ckpt_corrupt_pkl.pt'), lambda n, d: None if n is None else edit_pkl(n, d))
    cases['ckpt_corrupt_pkl.pt'] = {'error': bad('truncated pickle at byte', 'data.pkl')}

    first = sorted(model_keys, key=int)[0]

    def short(n, d):
        return d[:-4] if n == f'{root}/data/{first}' else d
    rewrite_zip(small, os.path.join(OUT, 'ckpt_short_storage.pt'), lambda n, d: None if n is None else short(n, d))
    cases['ckpt_short_storage.pt'] = {'error': bad(f'data/{first}', 'expected 80')}

    rewrite_zip(small, os.path.join(OUT, 'ckpt_big_endian.pt'), lambda n, d: {f'{root}/byteorder': b'big'} if n is None else d)
    cases['ckpt_big_endian.pt'] = {'error': bad('big-endian')}

    # Optimizer storages replaced by garbage of the wrong size: loading still works, which shows
    # they are never read.
    basic_root, basic_model_keys = storage_keys(basic, 'model')
    _, optimizer_keys = storage_keys(basic, 'optimizer')
    assert basic_model_keys and optimizer_keys and not (basic_model_keys & optimizer_keys)

    def garbage(n, d):
        return b'garbage' if n.startswith(f'{basic_root}/data/') and n.split('/')[-1] in optimizer_keys else d
    rewrite_zip(basic, os.path.join(OUT, 'ckpt_optimizer_garbage.pt'), lambda n, d: None if n is None else garbage(n, d))
    cases['ckpt_optimizer_garbage.pt'] = dict(cases['ckpt_basic.pt'])

    # A flipped byte in a weight storage, CRC left as it was.
    with zipfile.ZipFile(small) as z:
        info = z.getinfo(f'{root}/data/{first}')
    with open(small, 'rb') as f:
        data = bytearray(f.read())
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], 'little'), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], 'little')
    data[info.header_offset + 30 + name_len + extra_len] ^= 0x40
    write('ckpt_bad_crc.pt', bytes(data))
    cases['ckpt_bad_crc.pt'] = {'error': bad('CRC-32', f'data/{first}')}

    # Pre-1.6 serialization.
    save('ckpt_legacy.pt', {'model_args': model_args(model.config)}, error=bad('legacy'), _use_new_zipfile_serialization=False)

    for name, tensors in tensor_files.items():
        with open(os.path.join(OUT, name), 'w') as f:
            json.dump(tensors, f)
    manifest['checkpoints'] = cases


# ---- meta.pkl ---------------------------------------------------------------------------------------

def make_meta(manifest):
    chars = sorted(set("\n !$&',-.3:;?ABCXYZabcxyzé😀"))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    metas = {}
    for protocol in (0, 2, 4):  # nanoGPT's prepare.py uses pickle.dump's default, protocol 4
        name = 'meta.pkl' if protocol == 4 else f'meta_p{protocol}.pkl'
        data = pickle.dumps({'vocab_size': len(chars), 'itos': itos, 'stoi': stoi}, protocol=protocol)
        write(name, data)
        itos_loaded = pickle.loads(data)['itos']
        metas[name] = {'chars': [itos_loaded[i] for i in range(len(itos_loaded))]}
    broken = {
        'meta_bad_stoi.pkl': ({'vocab_size': 3, 'itos': {0: 'a', 1: 'b', 2: 'c'}, 'stoi': {'a': 0, 'b': 2, 'c': 1}}, 'stoi'),
        'meta_bad_vocab_size.pkl': ({'vocab_size': 4, 'itos': {0: 'a', 1: 'b', 2: 'c'}}, 'vocab_size'),
        'meta_gap.pkl': ({'itos': {0: 'a', 2: 'c', 3: 'd'}}, 'no id 1'),
        'meta_multichar.pkl': ({'itos': {0: 'a', 1: 'bc'}}, 'not one character'),
        'meta_str_keys.pkl': ({'itos': {'0': 'a', '1': 'b'}}, 'no id 0'),
        'meta_no_itos.pkl': ({'stoi': {'a': 0}}, 'itos'),
        'meta_numpy.pkl': ({'itos': {0: 'a'}, 'vocab_size': np.int64(1)}, '"numpy.core.multiarray.scalar"'),
    }
    for name, (value, error) in broken.items():
        write(name, pickle.dumps(value))
        code = 'ERR_UNSAFE_PICKLE' if 'numpy' in error else 'ERR_BAD_CHECKPOINT'
        metas[name] = {'error': {'code': code, 'includes': [error]}}
    manifest['meta'] = metas


def main():
    if os.environ.get('PYTHONHASHSEED') != '0':
        # Set order follows str hashes, which Python salts per run: pin it so the fixtures are stable.
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, 'PYTHONHASHSEED': '0'})
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    manifest = {}
    make_pickles(manifest)
    make_checkpoints(manifest)
    make_meta(manifest)
    with open(os.path.join(OUT, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, separators=(',', ':'))
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f'wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}')


if __name__ == '__main__':
    main()
