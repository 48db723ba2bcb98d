// Drives tokengate with LibreChat's own client code: @librechat/agents' OpenAI chat
// model, configured the way LibreChat configures a custom endpoint (baseURL, the
// endpoint's headers with the user resolved, the `user` field). Prints one JSON line:
// {"text": ..., "attempts": N} or, on an error, {"error", "status", "attempts",
// "lc_error_code", "librechat_shows", "inline"}:
// - `librechat_shows` is the text LibreChat v0.8.8-rc2 and later keep for the failed
//   turn: its server (packages/api/src/agents/errors.ts, `resolveLangChainError`,
//   since PR #15421) replaces an error LangChain classified as MODEL_RATE_LIMIT or
//   MODEL_NOT_FOUND with a typed payload the client shows as a fixed sentence, and
//   otherwise keeps "An error occurred while processing the request: " and the
//   error's message without LangChain's troubleshooting URL (the helpers below are
//   librechat-data-provider's own);
// - `inline` is whether LibreChat's client shows that text in the bubble rather than
//   folded under "details": at most 240 characters, no newline, and no `{` (which it
//   would parse as a JSON payload).
//
//   node librechat_client.mjs BASE_URL API_KEY USER_ID EMAIL NAME [responses]
//
// With `responses`, the model is configured as LibreChat configures it when the
// endpoint's "Use Responses API" switch is on: it posts to {baseURL}/responses.
import { getChatModelClass, Providers, HumanMessage } from '@librechat/agents';
import {
  parseLangChainErrorCode,
  stripLangChainTroubleshootingUrl,
} from 'librechat-data-provider';

const [baseURL, apiKey, userId, email, name, api] = process.argv.slice(2);
const useResponsesApi = api === 'responses';
let attempts = 0;
const paths = [];
const countingFetch = (url, init) => {
  const path = new URL(String(url)).pathname;
  if (path.endsWith('/chat/completions') || path.endsWith('/responses')) {
    attempts += 1;
    paths.push(path);
  }
  return fetch(url, init);
};

const ChatModel = getChatModelClass(Providers.OPENAI);
const llm = new ChatModel({
  model: 'fake-model',
  apiKey,
  streaming: true,
  useResponsesApi,
  user: userId,
  configuration: {
    baseURL,
    // What librechat.yaml's `headers` become once LibreChat resolves the placeholders.
    defaultHeaders: {
      'X-LibreChat-User-Id': userId,
      'X-LibreChat-User-Email': email,
      'X-LibreChat-User-Name': name,
    },
    fetch: countingFetch,
  },
});

try {
  let text = '';
  for await (const chunk of await llm.stream([new HumanMessage('Olá! Tudo bem?')])) {
    if (typeof chunk.content === 'string') {
      text += chunk.content;
    } else if (Array.isArray(chunk.content)) {
      // The Responses API's chunks carry content parts.
      for (const part of chunk.content) text += typeof part?.text === 'string' ? part.text : '';
    }
  }
  console.log(JSON.stringify({ text, attempts, paths }));
} catch (err) {
  const message = String(err?.message ?? err);
  const stamped = typeof err?.lc_error_code === 'string' && err.lc_error_code.length > 0
    ? err.lc_error_code.toUpperCase()
    : parseLangChainErrorCode(message);
  const classified = stamped === 'MODEL_RATE_LIMIT' || stamped === 'MODEL_NOT_FOUND';
  const shows = classified
    ? JSON.stringify({ type: stamped.toLowerCase() })
    : `An error occurred while processing the request: ${stripLangChainTroubleshootingUrl(message)}`;
  console.log(
    JSON.stringify({
      error: message,
      status: err?.status ?? err?.response?.status ?? null,
      attempts,
      paths,
      lc_error_code: stamped ?? null,
      librechat_shows: shows,
      inline: !classified && shows.length <= 240 && !/[\r\n{]/.test(shows),
    }),
  );
}
