// The platform's Blob storage (tables, reports, artifacts, MLflow artifacts, Dagster step logs) and
// the file share holding the API's event-log segments.

param name string
param location string
param tags object
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS'])
param sku string = 'Standard_LRS'
@description('Blob containers: the data root (RECSYS_STORAGE_URI), MLflow artifacts, Dagster step logs.')
param containers array = ['recsys', 'mlflow', 'dagster']
param eventsShareName string = 'events'
param eventsShareQuotaGiB int = 100

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
  }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
    // adlfs and Azurite speak plain Blob: no hierarchical namespace (README, Azure Blob)
    isHnsEnabled: false
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for c in containers: {
  parent: blobs
  name: c
  properties: {
    publicAccess: 'None'
  }
}]

resource files 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource eventsShare 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = {
  parent: files
  name: eventsShareName
  properties: {
    shareQuota: eventsShareQuotaGiB
  }
}

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output eventsShareName string = eventsShare.name
