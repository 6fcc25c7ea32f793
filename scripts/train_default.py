"""Train microgpt's default model: a small character-level GPT on tinyshakespeare.

The recipe is nanoGPT's shakespeare_char (config/train_shakespeare_char.py + data/shakespeare_char/
prepare.py), scaled to what two CPU cores can train in about an hour and a half:

  * data: tinyshakespeare, vocabulary = sorted unique characters, first 90% of the characters for
    training and the last 10% for validation (split at int(n * 0.9));
  * random windows of block_size from the train split (x = d[i:i+T], y = d[i+1:i+1+T]);
  * AdamW, betas (0.9, 0.99), weight decay on parameters with dim >= 2 only, linear warm-up then
    cosine decay to min_lr = lr / 10, gradient clipping at 1.0, fixed seed (torch.manual_seed);
  * the model is scripts/torch_gpt.py's GPT (nanoGPT's model.py); dropout 0.1 on the embeddings,
    residual branches and MLP, none on the attention matrix (--attn-dropout; on CPU that dropout
    alone costs ~40% of the step time);
  * the shipped weights are those with the best estimated validation loss (nanoGPT's rule of only
    checkpointing improvements); normally the last ones.

Throughput note: Debian's torch 1.13 is linked against the reference (netlib) BLAS, so float32
matmuls run at ~6 GFLOP/s here, while bfloat16 matmuls go through oneDNN (AVX512-BF16) at ~400.
Training therefore runs under torch.autocast('cpu', bfloat16) (as nanoGPT does on GPUs): matmuls
(and the attention softmax) in bfloat16; embeddings, residual stream, LayerNorm, the loss and AdamW
in float32 with float32 master weights. --amp 0 trains in plain float32 (~20x slower).
Every number that is reported (final losses, greedy sample) is computed in float32 from the weights
as shipped (rounded to float16, upcast back to float32), with the Linear layers run by oneDNN in
float32 (--eval-backend mkldnn, ~8x faster than the reference BLAS; the report cross-checks it
against plain float32 PyTorch on 16 validation windows; --eval-backend plain uses the default).

Wall-clock budget: --max-minutes stops training and still writes the outputs. With
--time-aware-schedule 1 (default) the cosine decay follows max(iteration progress, share of the
post-warm-up budget spent): when max_iters fits in the budget (an idle machine) the schedule is
exactly nanoGPT's and the run is reproducible; when other work slows the machine, the learning rate
still reaches min_lr as the budget ends (the report counts such iterations: itersWithTimeDrivenLr).
To reproduce bit-for-bit on a slower machine, use --time-aware-schedule 0 and a larger budget.

Outputs (in --out-dir, default models/ at the repo root):
  default.safetensors     float16 weights in our safetensors format (torch_gpt.save_safetensors),
                          with "valLoss" and "trainedWith" metadata
  default.report.json     config, hyper-parameters, machine, timings, final losses, greedy sample
  default.train-log.jsonl one line per evaluation point (estimated train/val loss, lr, time)
A checkpoint of the best weights so far (best.pt) and the latest full training state (state.pt,
with the optimizer and RNG states) are written to --ckpt-dir (default /tmp/microgpt-train/) at every
evaluation, so a killed run is not lost: --resume continues from state.pt.

Reproduce the shipped model (the defaults are the configuration that was used):

  nice -n 19 /usr/bin/python3 scripts/train_default.py

(the shipped run was launched from the repo root as
  nohup nice -n 19 /usr/bin/python3 scripts/train_default.py > /tmp/microgpt-train/run.out 2>&1 &).
A quick smoke test of the whole pipeline (~15 s):

  /usr/bin/python3 scripts/train_default.py --out-dir /tmp/mgt-test --ckpt-dir /tmp/mgt-test/ckpt \
      --n-layer 2 --n-head 2 --n-embd 64 --block-size 64 --batch-size 16 --max-iters 300 \
      --eval-interval 100 --sample-tokens 50
"""
import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt import GPT, GPTConfig, char_vocab, microgpt_config, save_safetensors  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data', default=os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare.txt'))
    p.add_argument('--out-dir', default=os.path.join(REPO, 'models'))
    p.add_argument('--name', default='default', help='output file stem')
    p.add_argument('--ckpt-dir', default='/tmp/microgpt-train')
    p.add_argument('--resume', action='store_true', help='continue from --ckpt-dir/state.pt')
    # model
    p.add_argument('--n-layer', type=int, default=6)
    p.add_argument('--n-head', type=int, default=4)
    p.add_argument('--n-embd', type=int, default=256)
    p.add_argument('--block-size', type=int, default=256)
    p.add_argument('--bias', type=int, default=1, choices=[0, 1])
    p.add_argument('--dropout', type=float, default=0.1,
                   help='embedding/residual/MLP dropout (nanoGPT dropout)')
    p.add_argument('--attn-dropout', type=float, default=0.0,
                   help='dropout on the attention matrix (separate because it costs ~40%% of the '
                        'step time on CPU); -1: same as --dropout')
    # optimisation
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=1.5e-3)
    p.add_argument('--min-lr', type=float, default=None, help='default: lr / 10')
    p.add_argument('--warmup-iters', type=int, default=100)
    p.add_argument('--max-iters', type=int, default=4000)
    p.add_argument('--lr-decay-iters', type=int, default=None, help='default: max-iters')
    p.add_argument('--weight-decay', type=float, default=0.1)
    p.add_argument('--beta1', type=float, default=0.9)
    p.add_argument('--beta2', type=float, default=0.99)
    p.add_argument('--grad-clip', type=float, default=1.0)
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--amp', type=int, default=1, choices=[0, 1], help='bfloat16 autocast for training')
    p.add_argument('--threads', type=int, default=2)
    # evaluation / budget
    p.add_argument('--eval-interval', type=int, default=250)
    p.add_argument('--eval-iters', type=int, default=16, help='random batches per split per estimate')
    p.add_argument('--log-interval', type=int, default=50)
    p.add_argument('--max-minutes', type=float, default=95.0,
                   help='wall-clock training budget; training stops early and outputs are still written')
    p.add_argument('--time-aware-schedule', type=int, default=1, choices=[0, 1],
                   help='let the cosine decay also follow the share of --max-minutes spent (see get_lr)')
    p.add_argument('--eval-backend', default='mkldnn', choices=['mkldnn', 'plain'],
                   help='float32 Linear layers for the final evaluation: oneDNN (fast) or the default BLAS')
    p.add_argument('--prompt', default='ROMEO:')
    p.add_argument('--sample-tokens', type=int, default=300)
    a = p.parse_args(argv)
    if a.attn_dropout < 0:
        a.attn_dropout = a.dropout
    if a.min_lr is None:
        a.min_lr = a.lr / 10
    if a.lr_decay_iters is None:
        a.lr_decay_iters = a.max_iters
    return a


def get_lr(it, a, time_fraction=0.0):
    """nanoGPT's schedule: linear warm-up, cosine decay to min_lr, then constant.

    The decay's progress is max(iteration progress, time_fraction), time_fraction being the share of
    the wall-clock budget already spent (0 unless --time-aware-schedule). On an idle machine, where
    max_iters fits the budget, the iteration term always wins and the schedule is exactly nanoGPT's
    (and reproducible); if the machine is slower (shared CPUs), the learning rate still reaches
    min_lr when the budget runs out instead of being cut off half-way.
    """
    if it < a.warmup_iters:
        return a.lr * (it + 1) / (a.warmup_iters + 1)
    ratio = min(1.0, max((it - a.warmup_iters) / (a.lr_decay_iters - a.warmup_iters), time_fraction))
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return a.min_lr + coeff * (a.lr - a.min_lr)


def schedule_driven_by_time(it, a, time_fraction):
    return it >= a.warmup_iters and time_fraction > (it - a.warmup_iters) / (a.lr_decay_iters - a.warmup_iters)


def make_optimizer(model, a):
    """nanoGPT's configure_optimizers: decay on tensors with dim >= 2 only."""
    params = [p for p in model.parameters() if p.requires_grad]  # deduplicated (tied wte/lm_head)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': a.weight_decay},
              {'params': no_decay, 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2)), \
        sum(p.numel() for p in decay), sum(p.numel() for p in no_decay)


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def whole_split_loss(model, data, block_size, batch=64):
    """Mean cross-entropy over all non-overlapping windows i = 0 .. floor((L-1)/B)-1 (float32, eval)."""
    n_win = (len(data) - 1) // block_size
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, n_win, batch):
            idx = torch.arange(s, min(s + batch, n_win))
            starts = (idx * block_size).unsqueeze(1) + torch.arange(block_size).unsqueeze(0)
            x, y = data[starts], data[starts + 1]
            logits, _ = model(x)
            total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                                     reduction='sum').item()
            count += y.numel()
    model.train(was_training)
    return total / count, count


def fast_fp32(model):
    """The same float32 model with its Linear layers run by oneDNN (torch.utils.mkldnn.to_mkldnn).

    Debian's torch uses the reference BLAS for float32 matmuls (~6 GFLOP/s here); oneDNN computes the
    same float32 products in another summation order ~8x faster (logits agree to ~1e-5).
    """
    from torch.utils.mkldnn import to_mkldnn
    m = to_mkldnn(copy.deepcopy(model))
    m.eval()
    return m


def shipped_copy(model, cfg):
    """The model as shipped: weights rounded to float16 and upcast back to float32."""
    m = GPT(cfg)
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
    m.eval()
    return m


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # denormal floats are very slow on CPUs; they carry no signal here
    os.makedirs(a.out_dir, exist_ok=True)
    os.makedirs(a.ckpt_dir, exist_ok=True)
    log_path = os.path.join(a.out_dir, f'{a.name}.train-log.jsonl')
    state_path = os.path.join(a.ckpt_dir, 'state.pt')
    best_path = os.path.join(a.ckpt_dir, 'best.pt')

    with open(a.data, encoding='utf-8') as f:
        text = f.read()
    chars = char_vocab(text)
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = len(data)
    train_data, val_data = data[:int(n * 0.9)], data[int(n * 0.9):]
    print(f'{n} chars, vocab {len(chars)}, train {len(train_data)}, val {len(val_data)}', flush=True)

    torch.manual_seed(a.seed)
    cfg = GPTConfig(block_size=a.block_size, vocab_size=len(chars), n_layer=a.n_layer, n_head=a.n_head,
                    n_embd=a.n_embd, dropout=a.dropout, bias=bool(a.bias))
    model = GPT(cfg)
    if a.attn_dropout != a.dropout:
        for block in model.transformer.h:
            block.attn.attn_dropout.p = a.attn_dropout
    n_params = model.num_params()
    optimizer, n_decay, n_no_decay = make_optimizer(model, a)
    print(f'{n_params} parameters ({n_decay} decayed, {n_no_decay} not)', flush=True)
    gen = torch.Generator().manual_seed(a.seed)
    eval_gen = torch.Generator().manual_seed(a.seed + 1)

    def get_batch(split, g):
        d = train_data if split == 'train' else val_data
        ix = torch.randint(len(d) - a.block_size, (a.batch_size,), generator=g)
        offs = ix.unsqueeze(1) + torch.arange(a.block_size).unsqueeze(0)
        return d[offs], d[offs + 1]

    amp_ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if a.amp else nullcontext

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for split in ('train', 'val'):
            losses = []
            for _ in range(a.eval_iters):
                x, y = get_batch(split, eval_gen)
                with amp_ctx():
                    _, loss = model(x, y)
                losses.append(loss.item())
            out[split] = sum(losses) / len(losses)
        model.train()
        return out

    it, best_val, best_iter, train_seconds, time_driven_iters = 0, float('inf'), None, 0.0, 0
    warm_elapsed = None  # training seconds spent when warm-up ended
    log_mode = 'w'
    if a.resume and os.path.exists(state_path):
        st = torch.load(state_path)
        model.load_state_dict(st['model'])
        optimizer.load_state_dict(st['optimizer'])
        gen.set_state(st['gen'])
        eval_gen.set_state(st['eval_gen'])
        torch.set_rng_state(st['torch_rng'])
        it, best_val, best_iter, train_seconds = st['iter'], st['best_val'], st['best_iter'], st['train_seconds']
        time_driven_iters, warm_elapsed = st['time_driven_iters'], st['warm_elapsed']
        log_mode = 'a'
        print(f'resumed at iter {it} (best val {best_val:.4f} at {best_iter})', flush=True)

    log_f = open(log_path, log_mode)
    budget = a.max_minutes * 60.0
    t_start = time.time() - train_seconds
    t_last = time.time()
    stopped_by_budget = False
    last_eval = None
    model.train()
    while True:
        is_last = it >= a.max_iters
        elapsed = time.time() - t_start
        over_budget = elapsed >= budget
        if it % a.eval_interval == 0 or is_last or over_budget:
            est = estimate_loss()
            elapsed = time.time() - t_start
            tf = 0.0
            if a.time_aware_schedule and warm_elapsed is not None:
                tf = (elapsed - warm_elapsed) / max(1e-9, budget - warm_elapsed)
            rec = {'iter': it, 'train_loss': est['train'], 'val_loss': est['val'], 'lr': get_lr(it, a, tf),
                   'elapsed_s': round(elapsed, 1), 'tokens': it * a.batch_size * a.block_size}
            log_f.write(json.dumps(rec) + '\n')
            log_f.flush()
            print(f"eval iter {it}: train {est['train']:.4f} val {est['val']:.4f} "
                  f"({elapsed / 60:.1f} min)", flush=True)
            last_eval = rec
            if est['val'] < best_val:
                best_val, best_iter = est['val'], it
                torch.save({'model': model.state_dict(), 'iter': it, 'val_loss': est['val'],
                            'train_loss': est['train'], 'args': vars(a)}, best_path + '.tmp')
                os.replace(best_path + '.tmp', best_path)
            if it > 0:
                torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                            'gen': gen.get_state(), 'eval_gen': eval_gen.get_state(),
                            'torch_rng': torch.get_rng_state(), 'iter': it, 'best_val': best_val,
                            'best_iter': best_iter, 'train_seconds': elapsed,
                            'time_driven_iters': time_driven_iters, 'warm_elapsed': warm_elapsed,
                            'args': vars(a)},
                           state_path + '.tmp')
                os.replace(state_path + '.tmp', state_path)
        if is_last:
            break
        if over_budget:
            stopped_by_budget = True
            print(f'wall-clock budget of {a.max_minutes} min reached at iter {it}', flush=True)
            break

        if it == a.warmup_iters and warm_elapsed is None:
            warm_elapsed = time.time() - t_start
        time_fraction = 0.0
        if a.time_aware_schedule and warm_elapsed is not None:  # share of the post-warm-up budget spent
            time_fraction = (time.time() - t_start - warm_elapsed) / max(1e-9, budget - warm_elapsed)
        lr = get_lr(it, a, time_fraction)
        if schedule_driven_by_time(it, a, time_fraction):
            time_driven_iters += 1
        for group in optimizer.param_groups:
            group['lr'] = lr
        x, y = get_batch('train', gen)
        with amp_ctx():
            _, loss = model(x, y)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
        if it % a.log_interval == 0:
            now = time.time()
            dt = (now - t_last) / a.log_interval
            t_last = now
            print(f'iter {it}: loss {loss.item():.4f}, lr {lr:.2e}, {dt * 1000:.0f} ms/iter, '
                  f'{a.batch_size * a.block_size / dt:.0f} tok/s', flush=True)
    train_time = time.time() - t_start
    log_f.close()

    # Ship the weights with the best estimated validation loss (nanoGPT keeps only improvements).
    final_iter = it
    if best_iter is not None and best_iter != final_iter:
        print(f'using best weights from iter {best_iter} (est. val {best_val:.4f}) '
              f'rather than the last ones (est. val {last_eval["val_loss"]:.4f})', flush=True)
        model.load_state_dict(torch.load(best_path)['model'])
    shipped_iter = best_iter if best_iter is not None else final_iter
    for block in model.transformer.h:  # no effect in eval mode; keep the shipped config clean
        block.attn.attn_dropout.p = a.dropout

    t_eval = time.time()
    shipped = shipped_copy(model, cfg)
    evaluator = fast_fp32(shipped) if a.eval_backend == 'mkldnn' else shipped
    # Cross-check the backend against plain float32 PyTorch on the first 16 validation windows.
    check_chars = 16 * a.block_size + 1
    check_plain, _ = whole_split_loss(shipped, val_data[:check_chars], a.block_size)
    check_eval, _ = whole_split_loss(evaluator, val_data[:check_chars], a.block_size)
    print(f'backend check on 16 val windows: plain {check_plain:.6f}, {a.eval_backend} {check_eval:.6f}',
          flush=True)
    val_loss, val_tokens = whole_split_loss(evaluator, val_data, a.block_size)
    print(f'final whole-split val loss (fp16-rounded weights, float32): {val_loss:.6f} '
          f'over {val_tokens} tokens', flush=True)
    # Train loss of the shipped weights, same definition, on the first len(val) characters
    # of the train split (the whole train split would take ~9x as long in float32 here).
    train_loss_sub, train_tokens = whole_split_loss(evaluator, train_data[:len(val_data)], a.block_size)
    prompt_ids = torch.tensor([[stoi[c] for c in a.prompt]], dtype=torch.long)
    out = evaluator.generate_greedy(prompt_ids, a.sample_tokens)
    out_ids = out[0].tolist()
    # Smallest gap between the two largest logits over the greedy steps: if it is far above the
    # ~1e-5 backend differences, any float32 implementation picks the same tokens.
    min_margin = float('inf')
    with torch.no_grad():
        for t in range(len(a.prompt), out.size(1)):
            ctx = out[:, max(0, t - a.block_size):t]
            top2 = evaluator(ctx)[0][0, -1].topk(2).values
            min_margin = min(min_margin, (top2[0] - top2[1]).item())
    continuation = ''.join(chars[i] for i in out_ids[len(a.prompt):])
    eval_seconds = time.time() - t_eval
    print(f'greedy continuation of {a.prompt!r}:\n{continuation}', flush=True)

    st_path = os.path.join(a.out_dir, f'{a.name}.safetensors')
    trained_with = (f'scripts/train_default.py (nanoGPT shakespeare_char recipe), weights of iter '
                    f'{shipped_iter} of {final_iter}, seed {a.seed}, torch {torch.__version__}')
    save_safetensors(st_path, model, chars, dtype=torch.float16,
                     extra_metadata={'valLoss': f'{val_loss:.6f}', 'trainedWith': trained_with})
    hparams = {k: v for k, v in vars(a).items()
               if k not in ('data', 'out_dir', 'name', 'ckpt_dir', 'resume', 'prompt', 'sample_tokens')}
    report = {
        'config': microgpt_config(cfg),
        'parameters': n_params,
        'hyperparameters': dict(hparams, betas=[a.beta1, a.beta2],
                                tokens_per_iter=a.batch_size * a.block_size,
                                schedule='linear warm-up, cosine decay to min_lr (nanoGPT get_lr)',
                                weight_decay_on='parameters with dim >= 2 only',
                                precision=('bfloat16 autocast for training (float32 master weights and optimizer)'
                                           if a.amp else 'float32')),
        'seed': a.seed,
        'iterations': final_iter,
        'shippedIteration': shipped_iter,
        'stoppedByWallClockBudget': stopped_by_budget,
        'itersWithTimeDrivenLr': time_driven_iters,
        'tokensSeen': final_iter * a.batch_size * a.block_size,
        'trainingSeconds': round(train_time, 1),
        'finalEvalSeconds': round(eval_seconds, 1),
        'machine': {'cpu': cpu_model(), 'logicalCpus': os.cpu_count(), 'torchThreads': torch.get_num_threads(),
                    'torch': torch.__version__, 'python': platform.python_version(),
                    'platform': platform.platform()},
        'data': {'path': os.path.relpath(os.path.abspath(a.data), REPO), 'chars': n, 'vocabSize': len(chars),
                 'trainChars': len(train_data), 'valChars': len(val_data)},
        'valLoss': val_loss,
        'valLossDefinition': ('mean cross-entropy over the whole validation split, non-overlapping windows '
                              'x = v[i*B:i*B+B], y = v[i*B+1:i*B+B+1], i = 0..floor((L-1)/B)-1; eval mode; '
                              'float32 with the weights as shipped (float16-rounded)'),
        'valTokens': val_tokens,
        'evalBackend': (f'{a.eval_backend} float32' + (' (torch.utils.mkldnn.to_mkldnn Linear layers)'
                                                        if a.eval_backend == 'mkldnn' else '')),
        'evalBackendCheck': {'windows': 16, 'plainFloat32Loss': check_plain, 'backendLoss': check_eval},
        'trainLoss': train_loss_sub,
        'trainLossDefinition': (f'same as valLoss, on the first {len(val_data)} characters of the '
                                f'train split ({train_tokens} tokens)'),
        'lastEstimate': last_eval,
        'bestEstimate': {'iter': best_iter, 'val_loss': best_val},
        'lossLog': os.path.basename(log_path),
        'sample': {'method': 'greedy (argmax), generate_greedy, float32, float16-rounded weights',
                   'prompt': a.prompt, 'maxNewTokens': a.sample_tokens, 'continuation': continuation,
                   'minTop2LogitMargin': min_margin},
        'safetensorsBytes': os.path.getsize(st_path),
    }
    with open(os.path.join(a.out_dir, f'{a.name}.report.json'), 'w') as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write('\n')
    print(f'wrote {st_path} ({report["safetensorsBytes"]} bytes) and the report', flush=True)


if __name__ == '__main__':
    main()
