// Key Vault holding every credential the apps use; the apps read them through Key Vault references
// with their managed identity (RBAC), so no secret value sits in an app definition.

param name string
param location string
param tags object
@secure()
param apiKeys string
@secure()
param postgresPassword string
param postgresAdminUser string
param postgresHost string
param redisName string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
  }
}

resource redis 'Microsoft.Cache/redis@2024-03-01' existing = {
  name: redisName
}

// name -> value; the apps refer to them by these names (main.bicep, kvSecret)
var secretValues = {
  'api-keys': apiKeys
  // TLS port, key in the URL: what RECSYS_REDIS_URL expects (redis-py reads rediss://)
  'redis-url': 'rediss://:${redis.listKeys().primaryKey}@${redis.properties.hostName}:${redis.properties.sslPort}/0'
  'dagster-pg-password': postgresPassword
  // psycopg2, the driver of the image (SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3)
  'mlflow-backend-uri': 'postgresql+psycopg2://${postgresAdminUser}:${uriComponent(postgresPassword)}@${postgresHost}:5432/mlflow?sslmode=require'
}

resource secrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [for s in items(secretValues): {
  parent: vault
  name: s.key
  properties: {
    value: s.value
  }
}]

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
