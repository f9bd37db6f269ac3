// The Container Apps environment (consumption workload profile, logs to Log Analytics) and the two
// views of the event-log share: read-write for the API, read-only for the console and the pipeline.

param name string
param location string
param tags object
param logAnalyticsName string
param storageAccountName string
param eventsShareName string

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource env 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

resource eventsStorage 'Microsoft.App/managedEnvironments/storages@2024-03-01' = [for mode in ['ReadWrite', 'ReadOnly']: {
  parent: env
  name: mode == 'ReadWrite' ? 'events-rw' : 'events-ro'
  properties: {
    azureFile: {
      accountName: account.name
      accountKey: account.listKeys().keys[0].value
      shareName: eventsShareName
      accessMode: mode
    }
  }
}]

output id string = env.id
output name string = env.name
output defaultDomain string = env.properties.defaultDomain
output eventsReadWrite string = 'events-rw'
output eventsReadOnly string = 'events-ro'
