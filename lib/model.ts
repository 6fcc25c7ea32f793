import { describe, parameterCount, type ModelConfig } from './config.js';
import type { BackendName, ModelRuntime, Precision } from './backends/types.js';
import { MicroGPTError, invalidArgument, optionsObject } from './errors.js';
import {
  checkPrompt,
  generateSample,
  planGeneration,
  type GenerateManyOptions,
  type GenerateOptions,
  type GenerationPlan,
  type GenerationResult,
  type TokenObserver,
} from './generate.js';
import type { EncodeOptions } from './tokenizer.js';
import { CharTokenizer, checkIdList } from './tokenizer.js';

/** Where a model came from, for `microgpt info` and diagnostics. */
export interface ModelSourceInfo {
  readonly path: string;
  readonly format: 'safetensors' | 'nanogpt-checkpoint' | 'memory';
  /** Element type of the stored weights (they are computed in float32). */
  readonly storedDType: string;
  /** Extra metadata strings (safetensors) or checkpoint facts (iter_num, best_val_loss). */
  readonly metadata: Readonly<Record<string, string>>;
}

/** A loaded model: tokenizer, config and an engine holding the weights. */
export class Model {
  readonly config: ModelConfig;
  readonly tokenizer: CharTokenizer;
  readonly source: ModelSourceInfo;
  private runtime: ModelRuntime | null;

  constructor(runtime: ModelRuntime, tokenizer: CharTokenizer, source: ModelSourceInfo) {
    if (tokenizer.size > runtime.config.vocabSize) {
      throw invalidArgument(`the vocabulary has ${tokenizer.size} characters but the model only ${runtime.config.vocabSize} token ids`);
    }
    this.runtime = runtime;
    this.config = runtime.config;
    this.tokenizer = tokenizer;
    this.source = source;
  }

  /** The engine running the forward pass. */
  get backend(): BackendName {
    return this.live().backend;
  }

  /** How the engine keeps the matrices ('f32' or 'f16'; see LoadOptions.precision). */
  get precision(): Precision {
    return this.live().precision;
  }

  /** Parameters, the tied lm_head counted once (as nanoGPT reports them). */
  get parameterCount(): number {
    return parameterCount(this.config);
  }

  encode(text: string, options?: EncodeOptions): number[] {
    return this.tokenizer.encode(text, options);
  }

  decode(ids: ArrayLike<number>): string {
    return this.tokenizer.decode(ids);
  }

  /**
   * Logits of every position of `ids` (1 to blockSize token ids), row-major [ids.length, vocabSize].
   */
  async logits(ids: ArrayLike<number>): Promise<Float32Array> {
    const runtime = this.live();
    return runtime.forward(this.checkIds(ids));
  }

  /** The continuation of `prompt` (without the prompt). */
  async generate(prompt: string, options?: GenerateOptions): Promise<string> {
    return (await this.complete(prompt, options)).text;
  }

  /** Like generate, with the token count and why it stopped. */
  async complete(prompt: string, options?: GenerateOptions): Promise<GenerationResult> {
    const { promptIds, plan } = this.prepare(prompt, { ...optionsObject(options, 'generation options'), numSamples: 1 });
    return drain(generateSample(this.live(), this.tokenizer, promptIds, plan, 0));
  }

  /** `numSamples` independent continuations of one prompt; sample i uses the seed's stream i. */
  async generateMany(prompt: string, options?: GenerateManyOptions): Promise<string[]> {
    return (await this.completeMany(prompt, options)).map((r) => r.text);
  }

  /** Like generateMany, with each sample's token count and finish reason. */
  async completeMany(prompt: string, options?: GenerateManyOptions): Promise<GenerationResult[]> {
    const { promptIds, plan } = this.prepare(prompt, options);
    const runtime = this.live();
    const samples: Promise<GenerationResult>[] = [];
    for (let i = 0; i < plan.numSamples; i++) samples.push(drain(generateSample(runtime, this.tokenizer, promptIds, plan, i)));
    return Promise.all(samples);
  }

  /**
   * The continuation as it is generated, in pieces: `for await (const piece of model.stream(...))`.
   * Options are checked now; the generator's return value is the GenerationResult.
   */
  stream(prompt: string, options?: GenerateOptions): AsyncGenerator<string, GenerationResult, void> {
    const { promptIds, plan } = this.prepare(prompt, { ...optionsObject(options, 'generation options'), numSamples: 1 });
    return generateSample(this.live(), this.tokenizer, promptIds, plan, 0);
  }

  /**
   * stream() of sample `sampleIndex` (generateMany's sample i), calling `observe` at every token
   * drawn, before its text is yielded. For the server's logprobs and distributions, which need
   * the step's logits (`withLogits`; its metrics alone do not: an engine may then keep them).
   * @internal
   */
  streamObserved(
    prompt: string,
    options: GenerateOptions | undefined,
    sampleIndex: number,
    observe: TokenObserver,
    withLogits = true,
  ): AsyncGenerator<string, GenerationResult, void> {
    const { promptIds, plan } = this.prepare(prompt, { ...optionsObject(options, 'generation options'), numSamples: 1 });
    return generateSample(this.live(), this.tokenizer, promptIds, plan, sampleIndex, observe, withLogits);
  }

  /** The engine itself, for diagnostics (the server's metrics, tests). @internal */
  get runtimeForDiagnostics(): ModelRuntime {
    return this.live();
  }

  /** Frees the engine's memory; the model cannot be used afterwards. */
  dispose(): void {
    this.runtime?.dispose();
    this.runtime = null;
  }

  private prepare(prompt: string, options: GenerateManyOptions | undefined): { promptIds: number[]; plan: GenerationPlan } {
    const plan = planGeneration(options, this.tokenizer.size, this.config.blockSize);
    const promptIds = this.tokenizer.encode(checkPrompt(prompt), { unknown: plan.unknownCharacters });
    if (promptIds.length === 0) throw invalidArgument('prompt has no character of the vocabulary left after dropping unknown ones');
    return { promptIds, plan };
  }

  private checkIds(ids: ArrayLike<number>): Int32Array {
    checkIdList(ids);
    const { blockSize, vocabSize } = this.config;
    if (ids.length < 1 || ids.length > blockSize) {
      throw invalidArgument(`ids must hold 1 to blockSize (${blockSize}) token ids, got ${ids.length}`);
    }
    const out = new Int32Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw invalidArgument(`ids[${i}] = ${describe(id)} is not a token id (an integer from 0 to ${vocabSize - 1})`);
      }
      out[i] = id;
    }
    return out;
  }

  private live(): ModelRuntime {
    if (this.runtime === null) throw new MicroGPTError('ERR_DISPOSED', 'the model has been disposed');
    return this.runtime;
  }
}

async function drain(gen: AsyncGenerator<string, GenerationResult, void>): Promise<GenerationResult> {
  for (;;) {
    const step = await gen.next();
    if (step.done === true) return step.value;
  }
}
