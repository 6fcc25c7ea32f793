"""PyTorch's loss by position in the window, for the fixture models (test/fixtures/expected/position-loss.json).

    /usr/bin/python3 scripts/make_position_loss_fixture.py     # or: npm run fixtures:position-loss

Loads each fixture model from its ckpt.pt and meta.pkl (as a reader of the files sees it: weights
computed in float32), takes the first 64 * 24 + 1 characters of tinyshakespeare's validation split
(the last 10 %), cuts them into non-overlapping windows of blockSize as microgpt's evaluate() does,
and records, for each context length n = 1..blockSize, the mean cross-entropy of predicting
token n + 1 of a window from its first n tokens. The text goes into the fixture, so the test
needs no corpus. Separate from make_fixtures.py, which retrains the models when it runs.
"""
import json
import os
import pickle
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_gpt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'test', 'fixtures')
CORPUS = os.path.join(ROOT, '..', 'shared', 'data', 'tinyshakespeare.txt')
MODELS = ['tiny-bias', 'tiny-nobias-f16', 'tiny-bf16']
CHARACTERS = 64 * 24 + 1


def load(name):
    folder = os.path.join(FIXTURES, 'models', name)
    checkpoint = torch.load(os.path.join(folder, 'ckpt.pt'), map_location='cpu')
    config = torch_gpt.GPTConfig(**checkpoint['model_args'])
    state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
    state = {k: (v if k.endswith('.attn.bias') else v.float()) for k, v in state.items()}
    model = torch_gpt.GPT(config)
    model.load_state_dict(state, strict=False)  # a checkpoint without the mask buffer keeps the model's own
    model.eval()
    with open(os.path.join(folder, 'meta.pkl'), 'rb') as f:
        stoi = pickle.load(f)['stoi']
    return model, stoi


@torch.no_grad()
def loss_by_position(model, ids):
    bs = model.config.block_size
    windows = (len(ids) - 1) // bs
    x = torch.tensor(ids[:windows * bs]).view(windows, bs)
    y = torch.tensor(ids[1:windows * bs + 1]).view(windows, bs)
    logits, _ = model(x)
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction='none').view(windows, bs)
    return windows, losses.double().mean(dim=0).tolist(), float(losses.double().mean())


def main():
    text = open(CORPUS, encoding='utf-8').read()
    sample = text[int(len(text) * 0.9):][:CHARACTERS]
    out = {'text': sample, 'torch': torch.__version__, 'models': {}}
    for name in MODELS:
        model, stoi = load(name)
        windows, curve, loss = loss_by_position(model, [stoi[c] for c in sample])
        out['models'][name] = {'checkpoint': f'models/{name}/ckpt.pt', 'blockSize': model.config.block_size,
                               'windows': windows, 'loss': loss, 'lossByPosition': curve}
        print(f'{name}: {windows} windows of {model.config.block_size}, loss {loss:.4f}, '
              f'context 1: {curve[0]:.4f}, context {model.config.block_size}: {curve[-1]:.4f}')
    with open(os.path.join(FIXTURES, 'expected', 'position-loss.json'), 'w', encoding='utf-8') as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write('\n')


if __name__ == '__main__':
    main()
