/**
 * microgpt: run small GPT language models of the nanoGPT kind from Node.js.
 *
 *   const model = await loadModel('out-shakespeare-char');   // or a .safetensors file
 *   console.log(await model.generate('ROMEO:', { maxNewTokens: 200, seed: 1 }));
 */
export { createModel, DEFAULT_MODEL, defaultModelPath, loadModel, readModelFile, type LoadOptions, type ModelFile } from './load.js';
export { Model, type ModelSourceInfo } from './model.js';
export { CharTokenizer, type EncodeOptions } from './tokenizer.js';
export { validateConfig, parameterCount, CONFIG_LIMITS, type ModelConfig } from './config.js';
export { MicroGPTError, type MicroGPTErrorCode } from './errors.js';
export {
  GENERATION_DEFAULTS,
  GENERATION_LIMITS,
  type ContextPolicy,
  type FinishReason,
  type GenerateManyOptions,
  type GenerateOptions,
  type GenerationResult,
} from './generate.js';
export { contextPolicyLosses, evaluate, MAX_EVAL_CHARACTERS, type ContextPolicyLosses, type EvaluateOptions, type Evaluation } from './evaluate.js';
export { Rng } from './sampling/rng.js';
export { Sampler, argmax, type SamplerSettings } from './sampling/sample.js';
export { readSafetensors, writeSafetensors, type SafetensorsModel, type WritableDType } from './formats/safetensors.js';
export { availableBackends } from './backends/index.js';
export type { Backend, BackendChoice, BackendName, InferenceSession, ModelRuntime, Precision, PrecisionChoice, RuntimeOptions } from './backends/types.js';
export type { ModelWeights, LayerWeights, Tensor } from './weights.js';
export { createHandler, SERVE_DEFAULTS, type HandlerOptions, type MicroGPTHandler } from './serve/handler.js';
export { startServer, SERVER_DEFAULTS, type RunningServer, type ServerOptions } from './serve/server.js';
export { COMPLETION_DEFAULTS, COMPLETION_LIMITS } from './serve/completions.js';
