package cli

// SchemaVersion is the version of every JSON document provision prints:
// the report of bootstrap, verify, renew and revoke, status, version, the
// dry runs and config check. Each carries it as schema_version, and the
// JSON Schema of each ships in the package (packaging/schemas, installed
// under /usr/share/provision/schemas/). The records under state_dir carry
// state.SchemaVersion.
//
// Why a version although the contract only ever extends: a script (or a
// fleet's collector) that stores documents from many nodes and many
// provision versions can tell which description a document follows
// without guessing from its fields, as kubeadm's apiVersion lets it. It
// changes only if a documented field is renamed or removed or its meaning
// changes; a field added does not change it (a document may carry fields
// its version's schema lists as optional).
const SchemaVersion = 1
