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
//   would parse as a JSON payload);
// - `terminal` is what LibreChat v0.8.8-rc3 and later store instead for a turn whose
//   model call failed, and what their client shows of it: `terminal.headline` ("The
//   model provider could not complete this request (status 402).") and, under it,
//   `terminal.detail`, the provider's text, shown inline when `terminal.inline`.
//   `terminal_protected` is the same with content protection on (any `filters.*.pii`,
//   a legacy `messageFilter.pii`), `terminal_no_text` with
//   `endpoints.agents.maxProviderErrorChars: 0`: the headline alone.
//
//   node librechat_client.mjs BASE_URL API_KEY USER_ID EMAIL NAME [responses]
//
// The model is `fake-model`, or the one LIBRECHAT_TEST_MODEL names (a user's pick
// from LibreChat's model menu).
//
// With `responses`, the model is configured as LibreChat configures it when the
// endpoint's "Use Responses API" switch is on: it posts to {baseURL}/responses.
import { getChatModelClass, Providers, HumanMessage } from '@librechat/agents';
import {
  DEFAULT_MAX_PROVIDER_ERROR_CHARS,
  ErrorTypes,
  parseLangChainErrorCode,
  stripLangChainTroubleshootingUrl,
} from 'librechat-data-provider';

// LibreChat's server (packages/api/src/agents/failures/terminal.ts,
// `getUserFacingError`, v0.8.8-rc4 and later; rc3 always withheld the text): an
// error LangChain classified as MODEL_RATE_LIMIT or MODEL_NOT_FOUND becomes its typed
// payload; any other becomes "The model provider could not complete this request."
// and a payload with the status and, unless content protection is on, the
// provider's text (without LangChain's troubleshooting URL, cut to
// `maxProviderErrorChars`). Its package, @librechat/api, is not published: these
// lines follow it, with librechat-data-provider's own helpers.
function stored(err, classified, { protectionEnabled, maxProviderErrorChars }) {
  if (classified) return JSON.stringify({ type: classified.toLowerCase() });
  const limit = Number.isSafeInteger(maxProviderErrorChars) && maxProviderErrorChars >= 0
    ? maxProviderErrorChars
    : DEFAULT_MAX_PROVIDER_ERROR_CHARS;
  const raw = typeof err?.message === 'string' ? err.message : undefined;
  const text = raw === undefined
    ? undefined
    : stripLangChainTroubleshootingUrl(raw.slice(0, limit + 256)).slice(0, limit).trim();
  const status = err?.status ?? null;
  const payload = {
    type: ErrorTypes.UPSTREAM_MODEL_ERROR,
    ...(status != null ? { status } : {}),
    ...(protectionEnabled === false && text ? { message: text } : {}),
  };
  return `The model provider could not complete this request.\n${JSON.stringify(payload)}`;
}

// LibreChat's client (client/src/components/Messages/Content/Error/ModelError.tsx
// and parts.tsx): the headline names the status; the provider's text goes under
// it, inline when it has at most 240 characters and no line break.
function shown(storedText) {
  const json = JSON.parse(storedText.slice(storedText.indexOf('{')));
  if (json.type !== ErrorTypes.UPSTREAM_MODEL_ERROR) return { stored: storedText, type: json.type };
  const headline = json.status != null
    ? `The model provider could not complete this request (status ${json.status}).`
    : 'The model provider could not complete this request.';
  const detail = json.message ?? null;
  return {
    stored: storedText,
    headline,
    detail,
    inline: detail !== null && detail.length <= 240 && !/[\r\n]/.test(detail),
  };
}

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
  model: process.env.LIBRECHAT_TEST_MODEL || 'fake-model',
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
  const kind = classified ? stamped : null;
  console.log(
    JSON.stringify({
      error: message,
      status: err?.status ?? err?.response?.status ?? null,
      attempts,
      paths,
      lc_error_code: stamped ?? null,
      librechat_shows: shows,
      inline: !classified && shows.length <= 240 && !/[\r\n{]/.test(shows),
      terminal: shown(stored(err, kind, { protectionEnabled: false })),
      terminal_protected: shown(stored(err, kind, { protectionEnabled: true })),
      terminal_no_text: shown(stored(err, kind, { protectionEnabled: false, maxProviderErrorChars: 0 })),
    }),
  );
}
