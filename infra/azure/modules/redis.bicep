// Azure Cache for Redis: the API's shared live state, cached lists, idempotency keys and rate limits.

param name string
param location string
param tags object
@allowed(['Basic', 'Standard', 'Premium'])
param skuName string = 'Basic'
param capacity int = 0

resource redis 'Microsoft.Cache/redis@2024-03-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    sku: {
      name: skuName
      family: skuName == 'Premium' ? 'P' : 'C'
      capacity: capacity
    }
    enableNonSslPort: false
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

output name string = redis.name
output hostName string = redis.properties.hostName
