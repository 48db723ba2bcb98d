// Drives tokengate with LibreChat's own client code: @librechat/agents' OpenAI chat
// model, configured the way LibreChat configures a custom endpoint (baseURL, the
// endpoint's headers with the user resolved, the `user` field). Prints one JSON line:
// {"text": ..., "attempts": N} or {"error": ..., "status": ..., "attempts": N}.
//
//   node librechat_client.mjs BASE_URL API_KEY USER_ID EMAIL NAME
import { getChatModelClass, Providers, HumanMessage } from '@librechat/agents';

const [baseURL, apiKey, userId, email, name] = process.argv.slice(2);
let attempts = 0;
const countingFetch = (url, init) => {
  if (String(url).includes('/chat/completions')) attempts += 1;
  return fetch(url, init);
};

const ChatModel = getChatModelClass(Providers.OPENAI);
const llm = new ChatModel({
  model: 'fake-model',
  apiKey,
  streaming: true,
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
    text += typeof chunk.content === 'string' ? chunk.content : '';
  }
  console.log(JSON.stringify({ text, attempts }));
} catch (err) {
  console.log(
    JSON.stringify({
      error: String(err?.message ?? err),
      status: err?.status ?? err?.response?.status ?? null,
      attempts,
    }),
  );
}
