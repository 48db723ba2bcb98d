// Checks the shape of the Compose stack, as resolved by `docker-compose config`:
// the services exist, images are pinned, tokengate is private and ordered by health,
// the names that wire LibreChat -> tokengate -> LiteLLM resolve, and there is no way
// around the meter: only LiteLLM holds a provider key, each secret reaches only the
// services that use it, LibreChat shows only the custom endpoint and cannot reach
// LiteLLM, and each database is reachable only by its owner.
//
//   node check_compose.mjs RESOLVED_COMPOSE_YAML LIBRECHAT_YAML ENV_FILE
import fs from 'node:fs';
import yaml from 'js-yaml';

const [composeFile, librechatFile, envFile] = process.argv.slice(2);
const compose = yaml.load(fs.readFileSync(composeFile, 'utf8'));
const librechat = yaml.load(fs.readFileSync(librechatFile, 'utf8'));
const env = Object.fromEntries(
  fs.readFileSync(envFile, 'utf8').split('\n')
    .filter((l) => /^[A-Z_]+=/.test(l))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
);
const problems = [];
const check = (ok, text) => { if (!ok) problems.push(text); };
const services = compose.services ?? {};
const envOf = (svc) => {
  const e = services[svc]?.environment ?? {};
  return Array.isArray(e)
    ? Object.fromEntries(e.map((x) => [x.split('=')[0], x.split('=').slice(1).join('=')]))
    : e;
};
const healthy = (svc, dep) => services[svc]?.depends_on?.[dep]?.condition === 'service_healthy';

for (const name of ['api', 'mongodb', 'meilisearch', 'vectordb', 'rag_api', 'litellm', 'tokengate', 'tokengate-db', 'mailpit']) {
  check(services[name], `service ${name} is missing`);
}
for (const [name, svc] of Object.entries(services)) {
  const image = svc.image ?? '';
  const tag = image.includes(':') ? image.slice(image.lastIndexOf(':') + 1) : '';
  check(tag && !tag.includes('/') && tag !== 'latest', `${name}: image ${image || '(none)'} is not pinned to a version`);
  check(['always', 'unless-stopped', 'on-failure'].some((r) => String(svc.restart ?? '').startsWith(r)), `${name}: no restart policy`);
}
const tg = services.tokengate ?? {};
check(tg.build, 'tokengate: not built from this repository');
check(!tg.ports || tg.ports.length === 0, 'tokengate: must not publish ports (only LibreChat reaches it)');
check(tg.healthcheck, 'tokengate: no health check');
check(healthy('tokengate', 'tokengate-db') && healthy('tokengate', 'litellm'), 'tokengate: must wait for a healthy database and LiteLLM');
check(healthy('api', 'tokengate'), 'api: must wait for a healthy tokengate');
for (const name of ['tokengate-db', 'litellm']) check(services[name]?.healthcheck, `${name}: no health check`);
check(String(envOf('tokengate').TOKENGATE_DATABASE_URL ?? '').includes('@tokengate-db:'), 'tokengate: database URL does not name tokengate-db');
// Two containers with one instance id release each other's holds: each must be its own.
check(!('TOKENGATE_INSTANCE_ID' in envOf('tokengate')), 'tokengate: a fixed TOKENGATE_INSTANCE_ID is shared by every container of the service');
// Docker kills a container 10 s after SIGTERM unless told otherwise; tokengate's
// drain takes up to 30 s for streams and 10 s for their settlements.
const grace = /^(\d+)s$/.exec(String(tg.stop_grace_period ?? ''));
check(grace && Number(grace[1]) > 40, `tokengate: stop_grace_period must be over 40s (is ${tg.stop_grace_period ?? '10s, the default'})`);

// LibreChat -> tokengate.
const endpoint = (librechat.endpoints?.custom ?? []).find((e) => e.name === 'IA SOLARIS');
check(endpoint, 'librechat.yaml: no "IA SOLARIS" custom endpoint');
if (endpoint) {
  const url = new URL(endpoint.baseURL);
  check(services[url.hostname], `librechat.yaml: baseURL host ${url.hostname} is not a service`);
  check(url.hostname === 'tokengate', 'librechat.yaml: baseURL must point at tokengate');
  const listen = String(envOf('tokengate').TOKENGATE_LISTEN ?? '');
  check(listen.endsWith(`:${url.port}`), `librechat.yaml: port ${url.port} is not tokengate's (${listen})`);
  check(url.pathname.replace(/\/$/, '') === '/v1', 'librechat.yaml: baseURL must end in /v1');
  const h = endpoint.headers ?? {};
  check(h['X-LibreChat-User-Id'] === '{{LIBRECHAT_USER_ID}}', 'librechat.yaml: user id header');
  check(h['X-LibreChat-User-Email'] === '{{LIBRECHAT_USER_EMAIL}}', 'librechat.yaml: email header');
  check(h['X-LibreChat-User-Name'] === '{{LIBRECHAT_USER_NAME}}', 'librechat.yaml: name header');
  check(h['X-LibreChat-User-Role'] === '{{LIBRECHAT_USER_ROLE}}', 'librechat.yaml: role header (plans by role)');
  check(h['X-LibreChat-Conversation-Id'] === '{{LIBRECHAT_BODY_CONVERSATIONID}}', 'librechat.yaml: conversation header (usage by chat)');
  // The tenant header is for a shared LibreChat's key only: any other key sending it is refused.
  check(!('X-LibreChat-Tenant-Id' in h), 'librechat.yaml: the tenant header must stay commented out for a single LibreChat');
  // The provider's built-in web search is refused by tokengate: not offered.
  check((endpoint.dropParams ?? []).includes('web_search'), 'librechat.yaml: the endpoint must drop web_search (tokengate refuses built-in tools)');
  const keyVar = /^\$\{(\w+)\}$/.exec(endpoint.apiKey ?? '')?.[1];
  check(keyVar && env[keyVar], `librechat.yaml: apiKey must come from a variable in ${envFile}`);
  check(envOf('tokengate').TOKENGATE_CLIENT_KEYS === env[keyVar], 'tokengate does not accept the key LibreChat sends');
}
const mounts = (services.api?.volumes ?? []).map((v) => (typeof v === 'string' ? v.split(':')[1] : v.target));
check(mounts.includes('/app/librechat.yaml'), 'api: librechat.yaml is not mounted at /app/librechat.yaml');

// tokengate -> LiteLLM.
const upstream = new URL(envOf('tokengate').TOKENGATE_UPSTREAM_URL ?? 'http://invalid');
check(upstream.hostname === 'litellm' && services.litellm, `tokengate: upstream host ${upstream.hostname} is not the litellm service`);
const litellmCmd = (services.litellm?.command ?? []).join(' ');
check(litellmCmd.includes(`--port ${upstream.port}`), `tokengate: upstream port ${upstream.port} is not LiteLLM's`);
check(envOf('tokengate').TOKENGATE_UPSTREAM_KEY === envOf('litellm').LITELLM_MASTER_KEY, 'tokengate: upstream key is not LiteLLM\'s master key');

// --- No way around the meter -----------------------------------------------------
// Which services may hold each secret of .env (by value: a secret inside a URL counts).
const secretUsers = {
  OPENAI_API_KEY: ['litellm'],
  LITELLM_MASTER_KEY: ['litellm', 'tokengate'],
  TOKENGATE_ADMIN_PASSWORD: ['tokengate'],
  TOKENGATE_POSTGRES_PASSWORD: ['tokengate', 'tokengate-db'],
  TOKENGATE_CLIENT_KEY: ['api', 'tokengate'],
  TOKENGATE_RAG_KEY: ['rag_api', 'tokengate'],
  CREDS_KEY: ['api'],
  CREDS_IV: ['api'],
  JWT_SECRET: ['api', 'rag_api'],
  JWT_REFRESH_SECRET: ['api'],
  MEILI_MASTER_KEY: ['api', 'meilisearch'],
  RAG_POSTGRES_PASSWORD: ['rag_api', 'vectordb'],
};
for (const [name, value] of Object.entries(env)) {
  if (!/(KEY|SECRET|PASSWORD|_IV)$/.test(name)) continue;
  check(secretUsers[name], `.env: ${name} has no rule for which services may hold it`);
}
for (const [name, svc] of Object.entries(services)) {
  check(!svc.env_file, `${name}: env_file hands it every variable of the file; list what it uses in environment`);
  // Anywhere in its definition: environment, command, entrypoint, labels, ...
  const whole = JSON.stringify(svc);
  for (const [secret, users] of Object.entries(secretUsers)) {
    const value = env[secret];
    if (!value) continue;
    check(!whole.includes(value) || users.includes(name), `${name}: holds ${secret}, which it does not use`);
  }
  // A mounted .env is read by LibreChat (dotenv) and hands over every secret in it.
  for (const v of svc.volumes ?? []) {
    const source = typeof v === 'string' ? v.split(':')[0] : String(v.source ?? '');
    check(!/(^|\/)\.env$/.test(source), `${name}: mounts ${source}, which hands it every secret of the stack`);
  }
  check(!svc.network_mode, `${name}: network_mode ${svc.network_mode} bypasses the stack's networks`);
  // A provider key under any name turns on LibreChat's built-in endpoints or lets a
  // service call the provider itself.
  if (name !== 'litellm') {
    for (const key of Object.keys(envOf(name))) {
      check(!/^(OPENAI|ANTHROPIC|GOOGLE|GEMINI|AZURE_OPENAI|AZURE|MISTRAL|GROQ|DEEPSEEK|OPENROUTER|COHERE|BEDROCK|AWS)_[A-Z_]*(KEY|TOKEN|SECRET)/.test(key),
        `${name}: holds a provider key (${key}); only litellm may`);
    }
  }
}
// The footer links every user to their page on tokengate, at the address tokengate
// builds its own links with (LibreChat renders CUSTOM_FOOTER as markdown, split on "|").
const footerLinks = [...String(envOf('api').CUSTOM_FOOTER ?? '').matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]);
const pageUrl = `${String(envOf('tokengate').TOKENGATE_PUBLIC_URL ?? '').replace(/\/$/, '')}/me`;
check(footerLinks.includes(pageUrl), `api: CUSTOM_FOOTER must link to the users' page ${pageUrl} (links: ${footerLinks.join(', ') || 'none'})`);
check(envOf('api').ENDPOINTS === 'custom', `api: ENDPOINTS must be "custom" (is ${envOf('api').ENDPOINTS ?? 'unset: every built-in endpoint'})`);
check(String(envOf('rag_api').RAG_OPENAI_BASEURL ?? '').startsWith('http://tokengate:'), 'rag_api: its embeddings must go through tokengate (RAG_OPENAI_BASEURL)');
check(envOf('tokengate').TOKENGATE_SERVICE_KEYS === `rag-api=${env.TOKENGATE_RAG_KEY}`, 'tokengate: the RAG API\'s key is not a service key');

// Networks: who can reach whom. A service without `networks` is on "default".
const networksOf = (svc) => {
  const n = services[svc]?.networks ?? ['default'];
  return Array.isArray(n) ? n : Object.keys(n);
};
const members = (network) => Object.keys(services).filter((s) => networksOf(s).includes(network));
const reachable = (svc) => new Set(networksOf(svc).flatMap(members).filter((s) => s !== svc));
const mayReach = {
  litellm: ['tokengate'],
  mongodb: ['api', 'meilisearch'],
  meilisearch: ['api', 'mongodb'],
  vectordb: ['rag_api'],
  'tokengate-db': ['tokengate'],
};
for (const [svc, allowed] of Object.entries(mayReach)) {
  for (const other of reachable(svc)) {
    check(allowed.includes(other), `${svc}: shares a network with ${other}`);
  }
}
check(!reachable('api').has('litellm'), 'api: LibreChat shares a network with LiteLLM');
// A published port is reachable from every container through the host.
for (const svc of Object.keys(mayReach)) {
  check(!(services[svc]?.ports?.length), `${svc}: publishes a port, which any service can reach through the host`);
}
check(reachable('api').has('tokengate'), 'api: LibreChat cannot reach tokengate');
check(reachable('rag_api').has('tokengate'), 'rag_api: cannot reach tokengate');
check(reachable('tokengate').has('litellm'), 'tokengate: cannot reach LiteLLM');

if (problems.length) {
  for (const p of problems) console.error(p);
  process.exit(1);
}
console.log(`ok: ${Object.keys(services).length} services`);
