// Validate contracts/asyncapi.json with the official AsyncAPI parser (@asyncapi/parser, installed by .ci/run).
// Exit 1 on any error-severity diagnostic (the document would not be usable); warnings are printed, not fatal.
const fs = require("fs");
const { Parser } = require("@asyncapi/parser");

async function main() {
  const file = process.argv[2];
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, "utf8"), { source: file });
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    const level = ["error", "warning", "info", "hint"][d.severity] || d.severity;
    console.log(`${file}: ${level}: ${d.code}: ${d.message} at ${(d.path || []).join(".")}`);
  }
  if (errors.length || !document) {
    console.error(`${file}: ${errors.length} error(s): not a valid AsyncAPI document`);
    process.exit(1);
  }
  console.log(`${file}: valid AsyncAPI ${document.version()} (${document.channels().length} channels, 0 errors)`);
}

main().catch((e) => {
  console.error(`${process.argv[2]}: the parser failed: ${e.message}`);
  process.exit(1);
});
