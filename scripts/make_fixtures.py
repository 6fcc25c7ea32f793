"""Golden fixtures for microgpt's tests, made with PyTorch (Debian's python3-torch).

    /usr/bin/python3 scripts/make_fixtures.py          # or: npm run fixtures

Trains three tiny models briefly on tinyshakespeare (so their logits have real structure and greedy
decoding has clear winners), saves each exactly as nanoGPT's train.py does (a ckpt.pt dict with
model, optimizer, model_args, iter_num, best_val_loss, config; plus a meta.pkl), also as our
safetensors format, and dumps what PyTorch computes from the weights as stored:
  - the logits of every position of a blockSize-long sequence,
  - a greedy (argmax) continuation of 3 * blockSize + 7 tokens, cropping as nanoGPT does,
  - sampled continuations with microgpt's documented sampler and PRNG (re-implemented below),
  - raw draws of the PRNG.
The variants cover what nanoGPT checkpoints look like in the wild: torch 1.x's stale attn.bias mask
buffer, torch.compile's _orig_mod. prefix, bias=False, float16 and bfloat16 storages.
"""
import json
import os
import pickle
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_gpt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'test', 'fixtures')
CORPUS = os.path.join(ROOT, '..', 'shared', 'data', 'tinyshakespeare.txt')
MASK64 = (1 << 64) - 1

# ---- microgpt's PRNG and sampler, re-implemented from their documentation ----------------------


class Rng:
    """xoshiro128** seeded by SplitMix64 from (seed + stream * 0xD1B54A32D192ED03) mod 2^64."""

    def __init__(self, seed, stream=0):
        state = (seed + stream * 0xD1B54A32D192ED03) & MASK64
        words = []
        for _ in range(2):
            state = (state + 0x9E3779B97F4A7C15) & MASK64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            z ^= z >> 31
            words += [z & 0xFFFFFFFF, z >> 32]
        self.s = words if any(words) else [1, 0, 0, 0]

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF

    def next_uint32(self):
        s = self.s
        result = (self._rotl((s[1] * 5) & 0xFFFFFFFF, 7) * 9) & 0xFFFFFFFF
        t = (s[1] << 9) & 0xFFFFFFFF
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 11)
        return result

    def uniform(self):
        return (self.next_uint32() >> 8) / 16777216.0


def sample_token(logits, temperature, top_k, top_p, u):
    """nanoGPT's temperature and top-k (ties with the k-th survive), then top-p, then the inverse
    CDF over token ids in ascending order. Float64 throughout, as microgpt's Sampler."""
    if temperature == 0:
        return int(torch.argmax(logits).item())
    v = logits.double() / temperature
    if top_k is not None and top_k < v.numel():
        kth = torch.topk(v, top_k).values[-1]
        v = torch.where(v >= kth, v, torch.tensor(float('-inf'), dtype=torch.float64))
    p = torch.exp(v - v.max())
    probs = p.tolist()
    total = sum(probs)
    if top_p is not None and top_p < 1:
        order = sorted([i for i, q in enumerate(probs) if q > 0], key=lambda i: (-probs[i], i))
        limit = top_p * total
        kept = 0.0
        keep = set()
        for i in order:
            if kept >= limit:
                break
            kept += probs[i]
            keep.add(i)
        probs = [q if i in keep else 0.0 for i, q in enumerate(probs)]
        total = kept
    target = u * total
    cumulative = 0.0
    last = 0
    for i, q in enumerate(probs):
        if q == 0:
            continue
        cumulative += q
        last = i
        if cumulative > target:
            return i
    return last


@torch.no_grad()
def generate_sampled(model, ids, max_new_tokens, temperature, top_k, top_p, seed, stream=0):
    rng = Rng(seed, stream)
    idx = torch.tensor([ids], dtype=torch.long)
    bs = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -bs:])
        u = 0.0 if temperature == 0 else rng.uniform()
        tok = sample_token(logits[0, -1], temperature, top_k, top_p, u)
        idx = torch.cat((idx, torch.tensor([[tok]])), dim=1)
    return idx[0, len(ids):].tolist()


# ---- training and saving ---------------------------------------------------------------------


def train(model, data, iters, batch_size, lr, seed):
    torch.manual_seed(seed)
    bs = model.config.block_size
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    model.train()
    for _ in range(iters):
        ix = torch.randint(len(data) - bs - 1, (batch_size,))
        x = torch.stack([data[i:i + bs] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + bs] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return opt, float(loss)


def save_nanogpt(out_dir, model, optimizer, chars, iters, loss, dtype, compiled, keep_mask, with_optimizer):
    """As nanoGPT's train.py: torch.save(checkpoint, os.path.join(out_dir, 'ckpt.pt'))."""
    os.makedirs(out_dir, exist_ok=True)
    state = model.state_dict()
    out = {}
    for k, v in state.items():
        if k.endswith('.attn.bias') and not keep_mask:
            continue  # torch >= 2 has flash attention and no mask buffer
        if dtype != torch.float32 and v.is_floating_point() and not k.endswith('.attn.bias'):
            v = v.to(dtype)
        out[('_orig_mod.' + k) if compiled else k] = v
    if dtype != torch.float32:
        # Keep lm_head tied to wte by storage, as state_dict does for the float32 tensors.
        prefix = '_orig_mod.' if compiled else ''
        out[prefix + 'lm_head.weight'] = out[prefix + 'transformer.wte.weight']
    c = model.config
    checkpoint = {
        'model': out,
        'model_args': torch_gpt.model_args(c),
        'iter_num': iters,
        'best_val_loss': torch.tensor(loss),
        'config': {'out_dir': out_dir, 'dataset': 'shakespeare_char', 'batch_size': 16, 'block_size': c.block_size,
                   'n_layer': c.n_layer, 'n_head': c.n_head, 'n_embd': c.n_embd, 'dropout': 0.0, 'bias': c.bias,
                   'learning_rate': 1e-3, 'compile': compiled, 'dtype': 'float32'},
    }
    if with_optimizer:
        checkpoint['optimizer'] = optimizer.state_dict()
    torch.save(checkpoint, os.path.join(out_dir, 'ckpt.pt'))
    torch_gpt.save_meta_pkl(os.path.join(out_dir, 'meta.pkl'), chars)


def stored_model(model, dtype):
    """The model as a reader of the saved file sees it: weights rounded to `dtype`, computed in fp32."""
    if dtype == torch.float32:
        return model
    sd = {k: (v.to(dtype).float() if v.is_floating_point() and not k.endswith('.attn.bias') else v)
          for k, v in model.state_dict().items()}
    copy = torch_gpt.GPT(model.config)
    copy.load_state_dict(sd)
    copy.eval()
    return copy


VARIANTS = [
    # name, config, dtype, compiled (_orig_mod.), keep the attn.bias mask, save optimizer state
    ('tiny-bias', dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True), torch.float32, False, True, True),
    ('tiny-nobias-f16', dict(n_layer=3, n_head=3, n_embd=36, block_size=24, bias=False), torch.float16, True, False, False),
    ('tiny-bf16', dict(n_layer=1, n_head=4, n_embd=16, block_size=8, bias=True), torch.bfloat16, False, True, False),
]

SAMPLING = [
    dict(seed=1234, temperature=0.8, top_k=10, top_p=None),
    dict(seed=7, temperature=1.0, top_k=None, top_p=0.9),
    dict(seed=2 ** 53 - 1, temperature=1.3, top_k=5, top_p=0.95),
]


def main():
    text = open(CORPUS, encoding='utf-8').read()
    chars = torch_gpt.char_vocab(text)
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text[:200_000]], dtype=torch.long)
    os.makedirs(os.path.join(OUT, 'models'), exist_ok=True)
    os.makedirs(os.path.join(OUT, 'expected'), exist_ok=True)

    for i, (name, shape, dtype, compiled, keep_mask, with_opt) in enumerate(VARIANTS):
        torch.manual_seed(100 + i)
        config = torch_gpt.GPTConfig(vocab_size=len(chars), dropout=0.0, **shape)
        model = torch_gpt.GPT(config)
        t0 = time.time()
        opt, loss = train(model, data, iters=300, batch_size=16, lr=3e-3, seed=200 + i)
        print(f'{name}: {model.num_params()} params, train loss {loss:.3f} ({time.time() - t0:.1f}s)')
        save_nanogpt(os.path.join(OUT, 'models', name), model, opt, chars, 300, loss, dtype, compiled, keep_mask, with_opt)
        ref = stored_model(model, dtype)
        st_dtype = torch.float16 if dtype == torch.float16 else torch.float32
        if dtype != torch.bfloat16:
            torch_gpt.save_safetensors(os.path.join(OUT, 'models', f'{name}.safetensors'), ref, chars, st_dtype)

        bs = config.block_size
        # Logits of every position of a block-long window of validation text.
        start = 1_050_000
        ids = [stoi[c] for c in text[start:start + bs]]
        with torch.no_grad():
            logits, _ = ref(torch.tensor([ids]))
        logits.numpy().astype('<f4').tofile(os.path.join(OUT, 'expected', f'{name}.logits.bin'))

        # Greedy continuation past the block size; the prompt is longer than the block for one model.
        prompt = 'First Citizen:\nBefore we proceed any further' if i == 0 else 'ROMEO:'
        prompt_ids = [stoi[c] for c in prompt]
        steps = 3 * bs + 7
        out = ref.generate_greedy(torch.tensor([prompt_ids]), steps)[0, len(prompt_ids):].tolist()
        margin = greedy_margin(ref, prompt_ids, out)
        print(f'  greedy {steps} tokens, smallest top-1/top-2 logit gap {margin:.2e}')
        if margin < 1e-3:
            raise SystemExit(f'{name}: greedy decoding has a near tie ({margin}); change the prompt or seed')

        sampled = []
        for s in SAMPLING:
            toks = generate_sampled(ref, prompt_ids, 2 * bs + 3, s['temperature'], s['top_k'], s['top_p'], s['seed'])
            many = [generate_sampled(ref, prompt_ids, bs, s['temperature'], s['top_k'], s['top_p'], s['seed'], stream=k)
                    for k in range(3)]
            sampled.append({'seed': s['seed'], 'temperature': s['temperature'], 'topK': s['top_k'], 'topP': s['top_p'],
                            'maxNewTokens': 2 * bs + 3, 'continuation': ''.join(chars[t] for t in toks),
                            'samples': {'maxNewTokens': bs, 'continuations': [''.join(chars[t] for t in m) for m in many]}})

        # Mean cross-entropy over the validation split (last 10%), in non-overlapping windows.
        val_ids = torch.tensor([stoi[c] for c in text[int(len(text) * 0.9):]], dtype=torch.long)
        windows = (len(val_ids) - 1) // bs
        with torch.no_grad():
            x = val_ids[:windows * bs].view(windows, bs)
            y = val_ids[1:windows * bs + 1].view(windows, bs)
            losses = [ref(x[i:i + 256], y[i:i + 256])[1] * len(x[i:i + 256]) for i in range(0, windows, 256)]
            val_loss = float(sum(losses) / windows)

        expected = {
            'config': torch_gpt.microgpt_config(config),
            'parameters': model.num_params(),
            'storedDType': {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16'}[dtype],
            'checkpoint': f'models/{name}/ckpt.pt',
            'safetensors': None if dtype == torch.bfloat16 else f'models/{name}.safetensors',
            'logits': {'ids': ids, 'file': f'expected/{name}.logits.bin'},
            'greedy': {'prompt': prompt, 'maxNewTokens': steps, 'continuation': ''.join(chars[t] for t in out)},
            'sampled': sampled,
            'valLoss': {'split': 'val', 'windows': windows, 'loss': val_loss},
            'torch': torch.__version__,
        }
        with open(os.path.join(OUT, 'expected', f'{name}.json'), 'w', encoding='utf-8') as f:
            json.dump(expected, f, indent=1, ensure_ascii=False)

    # Float16 and bfloat16 rounding of awkward float32 values, as torch rounds them.
    g = torch.Generator().manual_seed(5)
    values = torch.cat([
        torch.randn(300, generator=g) * 10.0 ** torch.randint(-9, 6, (300,), generator=g).float(),
        torch.tensor([0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9,
                      1.0009765625, 1.00048828125, 1.00146484375, 3.3895313892515355e38, float('inf'), float('-inf')]),
    ]).float()
    rounding = {
        'float32Bits': values.view(torch.int32).tolist(),
        'float16Bits': values.half().view(torch.int16).tolist(),
        'bfloat16Bits': values.bfloat16().view(torch.int16).tolist(),
    }
    with open(os.path.join(OUT, 'expected', 'rounding.json'), 'w') as f:
        json.dump(rounding, f)

    draws = []
    for seed, stream in [(0, 0), (42, 0), (42, 3), (2 ** 53 - 1, 0), (123456789, 1023)]:
        rng = Rng(seed, stream)
        words = [rng.next_uint32() for _ in range(8)]
        uniforms = [rng.uniform() for _ in range(8)]
        draws.append({'seed': seed, 'stream': stream, 'uint32': words, 'uniform': uniforms})
    with open(os.path.join(OUT, 'expected', 'rng.json'), 'w') as f:
        json.dump(draws, f, indent=1)


@torch.no_grad()
def greedy_margin(model, prompt_ids, out):
    """Smallest gap between the best and second-best logit over the greedy steps."""
    seq = list(prompt_ids)
    bs = model.config.block_size
    smallest = float('inf')
    for tok in out:
        logits, _ = model(torch.tensor([seq[-bs:]]))
        top = torch.topk(logits[0, -1], 2).values
        smallest = min(smallest, float(top[0] - top[1]))
        seq.append(tok)
    return smallest


if __name__ == '__main__':
    main()
