// Validates a librechat.yaml the way LibreChat does at start:
// configSchema.strict().safeParse(config), with the schema from librechat-data-provider,
// and checks that its `version` is the config version that package's release expects
// (LibreChat itself only logs a warning on a mismatch).
//
//   node validate_librechat_yaml.mjs FILE      (exit 0 and "valid", or 1 and the issues)
import fs from 'node:fs';
import yaml from 'js-yaml';
import { configSchema, Constants } from 'librechat-data-provider';

const file = process.argv[2];
const config = yaml.load(fs.readFileSync(file, 'utf8'));
const result = configSchema.strict().safeParse(config);
if (!result.success) {
  for (const issue of result.error.issues) {
    console.error(`${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  process.exit(1);
}
if (String(config.version) !== Constants.CONFIG_VERSION) {
  console.error(`version: ${config.version}, LibreChat ${Constants.VERSION} expects ${Constants.CONFIG_VERSION}`);
  process.exit(1);
}
console.log('valid');
