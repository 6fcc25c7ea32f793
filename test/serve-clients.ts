// Streaming clients for the serve load test, run in a worker thread or a child process so that
// parsing 32 streams does not share the server's event loop (the clients of a real deployment are
// elsewhere). Job: { url, model, maxTokens, seeds }; result: { results: { text, chunks }[], seconds }.
import { request } from 'node:http';
import { parentPort, workerData } from 'node:worker_threads';

interface Job {
  url: string;
  model: string;
  maxTokens: number;
  seeds: number[];
}

function stream(job: Job, seed: number): Promise<{ text: string; chunks: number }> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ model: job.model, prompt: '\n', max_tokens: job.maxTokens, temperature: 0.8, top_k: 200, seed, stream: true });
    const req = request(new URL('/v1/completions', job.url), { method: 'POST', agent: false }, (res) => {
      let pending = '';
      let text = '';
      let chunks = 0;
      let done = false;
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        pending += d;
        let cut: number;
        while ((cut = pending.indexOf('\n\n')) >= 0) {
          const event = pending.slice(0, cut);
          pending = pending.slice(cut + 2);
          if (event === 'data: [DONE]') done = true;
          else if (event.startsWith('data: {')) {
            const piece = (JSON.parse(event.slice(6)) as { choices: { text: string }[] }).choices[0]?.text ?? '';
            if (piece !== '') chunks++;
            text += piece;
          }
        }
      });
      res.on('end', () => (res.statusCode === 200 && done ? resolve({ text, chunks }) : reject(new Error(`status ${res.statusCode}, [DONE] ${done}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// In a worker thread, the job comes as workerData and the result goes back as a message; in a
// child process (the load test's, run at the lowest priority), as MICROGPT_CLIENTS_JOB and stdout.
const job = (parentPort === null ? JSON.parse(process.env.MICROGPT_CLIENTS_JOB ?? '{}') : workerData) as Job;
const started = performance.now();
const results = await Promise.all(job.seeds.map((seed) => stream(job, seed)));
const report = { results, seconds: (performance.now() - started) / 1000 };
if (parentPort === null) process.stdout.write(JSON.stringify(report));
else parentPort.postMessage(report);
